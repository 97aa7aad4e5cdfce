//! The AVX2 microkernel of the packed GEMM: a 6 × 16 tile of y in twelve registers, per k one
//! line of the panel (two f32 vectors, or one bf16 vector widened by a shift and a mask) and six
//! broadcasts of x.

use super::{LineBf16, LineF32, MR, NR};
use std::arch::x86_64::*;

/// A panel line as two vectors of eight f32 columns (0..8, 8..16).
pub trait Load {
    /// # Safety
    /// AVX2 is present; p points at a line.
    unsafe fn load(p: *const Self) -> (__m256, __m256);
}

impl Load for LineF32 {
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const Self) -> (__m256, __m256) {
        // Lines are 64-byte aligned.
        let p = p as *const f32;
        (_mm256_load_ps(p), _mm256_load_ps(p.add(8)))
    }
}

impl Load for LineBf16 {
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const Self) -> (__m256, __m256) {
        // Lines are 32-byte aligned; word j holds column j low, column 8 + j high.
        let v = _mm256_load_si256(p as *const __m256i);
        let lo = _mm256_slli_epi32::<16>(v);
        let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32));
        (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
    }
}

/// y[rows × cols] += x[rows × kc] · panels, in 6-row tiles (a shorter last one), each tile
/// against every panel before the next tile. x has row stride `lda`, y row stride `ldc`;
/// `panels` is the first panel's k-block (kc lines) and the stride between panels, in lines.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip<L: Load>(
    x: *const f32,
    lda: usize,
    (panel, panel_stride): (*const L, usize),
    kc: usize,
    y: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut i = 0;
    while i < rows {
        let a = x.add(i * lda);
        if rows - i == 1 {
            row_strip(a, (panel, panel_stride), kc, y.add(i * ldc), cols);
            break;
        }
        for g in 0..cols.div_ceil(NR) {
            let (b, c) = (panel.add(g * panel_stride), y.add(i * ldc + g * NR));
            let cols = (cols - g * NR).min(NR);
            match rows - i {
                2 => tile::<2, L>(a, lda, b, kc, c, ldc, cols),
                3 => tile::<3, L>(a, lda, b, kc, c, ldc, cols),
                4 => tile::<4, L>(a, lda, b, kc, c, ldc, cols),
                5 => tile::<5, L>(a, lda, b, kc, c, ldc, cols),
                _ => tile::<MR, L>(a, lda, b, kc, c, ldc, cols),
            }
        }
        i += MR;
    }
}

/// One row (batch-1 decoding) against every panel: two panels at a time, two streams of lines
/// in flight, and the odd last panel alone.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_strip<L: Load>(
    a: *const f32,
    (panel, panel_stride): (*const L, usize),
    kc: usize,
    y: *mut f32,
    cols: usize,
) {
    let panels = cols.div_ceil(NR);
    let mut g = 0;
    while g + 2 <= panels {
        let pair = (
            panel.add(g * panel_stride),
            panel.add((g + 1) * panel_stride),
        );
        let last = (cols - (g + 1) * NR).min(NR);
        row_pair::<L>(a, pair, kc, y.add(g * NR), last);
        g += 2;
    }
    if g < panels {
        row_tile::<L>(
            a,
            panel.add(g * panel_stride),
            kc,
            y.add(g * NR),
            cols - g * NR,
        );
    }
}

/// The 1 × 16 tile (batch-1 decoding): with one row, the R-row tile's two accumulators would
/// make each line wait on the previous line's FMAs (latency, not throughput, would bound it), so
/// four consecutive lines go to four accumulator pairs, summed at the end.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_tile<L: Load>(a: *const f32, panel: *const L, kc: usize, c: *mut f32, cols: usize) {
    const U: usize = 4;
    let mut lo = [_mm256_setzero_ps(); U];
    let mut hi = [_mm256_setzero_ps(); U];
    let mut q = 0;
    while q + U <= kc {
        for u in 0..U {
            let (b0, b1) = L::load(panel.add(q + u));
            let av = _mm256_broadcast_ss(&*a.add(q + u));
            lo[u] = _mm256_fmadd_ps(av, b0, lo[u]);
            hi[u] = _mm256_fmadd_ps(av, b1, hi[u]);
        }
        q += U;
    }
    while q < kc {
        let (b0, b1) = L::load(panel.add(q));
        let av = _mm256_broadcast_ss(&*a.add(q));
        lo[0] = _mm256_fmadd_ps(av, b0, lo[0]);
        hi[0] = _mm256_fmadd_ps(av, b1, hi[0]);
        q += 1;
    }
    let sum = |v: [__m256; U]| _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
    add_row(c, sum(lo), sum(hi), cols);
}

/// Two adjacent panels against one row: the first's 16 columns of y and the second's first
/// `cols`, two lines at a time.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_pair<L: Load>(
    a: *const f32,
    (p0, p1): (*const L, *const L),
    kc: usize,
    c: *mut f32,
    cols: usize,
) {
    let z = _mm256_setzero_ps();
    let (mut l0, mut h0, mut l1, mut h1) = ([z; 2], [z; 2], [z; 2], [z; 2]);
    let mut q = 0;
    while q + 2 <= kc {
        for u in 0..2 {
            let (b0, b1) = L::load(p0.add(q + u));
            let (d0, d1) = L::load(p1.add(q + u));
            let av = _mm256_broadcast_ss(&*a.add(q + u));
            l0[u] = _mm256_fmadd_ps(av, b0, l0[u]);
            h0[u] = _mm256_fmadd_ps(av, b1, h0[u]);
            l1[u] = _mm256_fmadd_ps(av, d0, l1[u]);
            h1[u] = _mm256_fmadd_ps(av, d1, h1[u]);
        }
        q += 2;
    }
    if q < kc {
        let (b0, b1) = L::load(p0.add(q));
        let (d0, d1) = L::load(p1.add(q));
        let av = _mm256_broadcast_ss(&*a.add(q));
        l0[0] = _mm256_fmadd_ps(av, b0, l0[0]);
        h0[0] = _mm256_fmadd_ps(av, b1, h0[0]);
        l1[0] = _mm256_fmadd_ps(av, d0, l1[0]);
        h1[0] = _mm256_fmadd_ps(av, d1, h1[0]);
    }
    let sum = |v: [__m256; 2]| _mm256_add_ps(v[0], v[1]);
    add_row(c, sum(l0), sum(h0), NR);
    add_row(c.add(NR), sum(l1), sum(h1), cols);
}

/// y's first `cols` (≤ 16) columns of one row += (lo, hi).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn add_row(row: *mut f32, lo: __m256, hi: __m256, cols: usize) {
    if cols == NR {
        _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), lo));
        _mm256_storeu_ps(row.add(8), _mm256_add_ps(_mm256_loadu_ps(row.add(8)), hi));
    } else {
        let mut t = [0f32; NR];
        _mm256_storeu_ps(t.as_mut_ptr(), lo);
        _mm256_storeu_ps(t.as_mut_ptr().add(8), hi);
        for (j, v) in t.iter().take(cols).enumerate() {
            *row.add(j) += v;
        }
    }
}

/// The R × 16 tile: R rows of x against one panel, added into y's first `cols` columns.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, L: Load>(
    a: *const f32,
    lda: usize,
    panel: *const L,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    for q in 0..kc {
        let (b0, b1) = L::load(panel.add(q));
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*a.add(r * lda + q));
            lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
        }
    }
    for r in 0..R {
        add_row(c.add(r * ldc), lo[r], hi[r], cols);
    }
}
