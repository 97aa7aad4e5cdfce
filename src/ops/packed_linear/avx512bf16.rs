//! The AVX-512-BF16 microkernel of the packed GEMM: per k pair, one pair line of a panel (16
//! columns × 2 k, one register) and, for each row, a broadcast of that row's two bf16 values,
//! combined by VDPBF16PS (two products per lane, accumulated in f32). A tile is up to 8 rows ×
//! 2 panels: sixteen accumulators, each line load shared by 8 rows, each broadcast by 2 panels.
//! One row (decoding) has its own loop with four accumulators a panel. The AMX path runs this
//! kernel for fewer than 16 rows.

use super::avx512::add_row;
use super::{LinePair, NR};
use std::arch::x86_64::*;

/// Rows per tile.
const MR: usize = 8;

/// y[rows × cols] += a[rows × 2·kpairs] · panels, a in bf16 bits with row stride `lda`; tiles of
/// 8 rows × 2 panels, each row tile against every panel before the next.
///
/// # Safety
/// AVX-512 F/BW/VL and BF16 are present; a holds `rows` rows of `lda` bf16, 2·kpairs of each
/// read; each of the cols/16 panels holds kpairs lines `stride` apart; y holds `rows` rows of
/// `ldc` floats, the first `cols` of each written.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn strip(
    (a, lda): (*const u16, usize),
    (panel, stride): (*const LinePair, usize),
    kpairs: usize,
    y: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let panels = cols.div_ceil(NR);
    for i in (0..rows).step_by(MR) {
        let (a, y) = (a.add(i * lda), y.add(i * ldc));
        if rows - i == 1 {
            for g in 0..panels {
                let cols = (cols - g * NR).min(NR);
                row(a, (panel.add(g * stride), kpairs), y.add(g * NR), cols);
            }
            break;
        }
        let mut g = 0;
        while g < panels {
            let b = (panel.add(g * stride), stride);
            let c = y.add(g * NR);
            let cols = cols - g * NR;
            let two = g + 1 < panels;
            macro_rules! tiles {
                ($($r:literal)*) => {
                    match (rows - i, two) {
                        $(($r, true) => tile::<$r, 2>((a, lda), b, kpairs, c, ldc, cols),
                          ($r, false) => tile::<$r, 1>((a, lda), b, kpairs, c, ldc, cols),)*
                        (_, true) => tile::<MR, 2>((a, lda), b, kpairs, c, ldc, cols),
                        (_, false) => tile::<MR, 1>((a, lda), b, kpairs, c, ldc, cols),
                    }
                };
            }
            tiles!(1 2 3 4 5 6 7);
            g += 2;
        }
    }
}

/// One row against one panel: four consecutive pair lines go to four accumulators, summed at
/// the end (one accumulator would make each line wait on the previous VDPBF16PS, and a panel
/// that sits in L2 then streams at a quarter of the rate).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn row(a: *const u16, (panel, kpairs): (*const LinePair, usize), c: *mut f32, cols: usize) {
    const U: usize = 4;
    let mut acc = [_mm512_setzero_ps(); U];
    let line = |q: usize| {
        let p = panel.add(q) as *const __m512i;
        std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(p))
    };
    let pair = |q: usize| {
        let v = (a.add(2 * q) as *const i32).read_unaligned();
        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(v))
    };
    let mut q = 0;
    while q + U <= kpairs {
        for (u, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_dpbf16_ps(*acc, pair(q + u), line(q + u));
        }
        q += U;
    }
    while q < kpairs {
        acc[0] = _mm512_dpbf16_ps(acc[0], pair(q), line(q));
        q += 1;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    add_row(c, sum, cols);
}

/// R rows × P panels (P ≤ 2) added into y's first `cols` columns (≤ 16·P).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize, const P: usize>(
    (a, lda): (*const u16, usize),
    (panel, stride): (*const LinePair, usize),
    kpairs: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for q in 0..kpairs {
        let b: [__m512bh; P] = std::array::from_fn(|p| {
            let line = panel.add(p * stride + q) as *const __m512i;
            // SAFETY (of the cast): both are 512 bits; lines are 64-byte aligned.
            std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(line))
        });
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = (a.add(r * lda + 2 * q) as *const i32).read_unaligned();
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
            for (acc, b) in acc.iter_mut().zip(b) {
                *acc = _mm512_dpbf16_ps(*acc, av, b);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (p, v) in acc.iter().enumerate() {
            let n = cols.saturating_sub(p * NR).min(NR);
            add_row(c.add(r * ldc + p * NR), *v, n);
        }
    }
}

/// dst[..src.len()] = src rounded to bf16 bits (nearest even), 16 at a time.
///
/// # Safety
/// AVX-512 F/BW/VL and BF16 are present; dst has room for src.len() elements (which need not
/// be initialised).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn round(src: &[f32], dst: *mut u16) {
    let n = src.len();
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
        let bits = std::mem::transmute::<__m256bh, __m256i>(v);
        _mm256_storeu_si256(dst.add(i) as *mut __m256i, bits);
        i += 16;
    }
    if i < n {
        let mask = ((1u32 << (n - i)) - 1) as __mmask16;
        let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.as_ptr().add(i)));
        _mm256_mask_storeu_epi16(
            dst.add(i) as *mut i16,
            mask,
            std::mem::transmute::<__m256bh, __m256i>(v),
        );
    }
}
