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
        for g in 0..cols.div_ceil(NR) {
            let (b, c) = (panel.add(g * panel_stride), y.add(i * ldc + g * NR));
            let cols = (cols - g * NR).min(NR);
            match rows - i {
                1 => tile::<1, L>(a, lda, b, kc, c, ldc, cols),
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
        let row = c.add(r * ldc);
        if cols == NR {
            _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), lo[r]));
            _mm256_storeu_ps(
                row.add(8),
                _mm256_add_ps(_mm256_loadu_ps(row.add(8)), hi[r]),
            );
        } else {
            let mut t = [0f32; NR];
            _mm256_storeu_ps(t.as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), hi[r]);
            for (j, v) in t.iter().take(cols).enumerate() {
                *row.add(j) += v;
            }
        }
    }
}
