//! The AVX-512 microkernel of the packed GEMM for f32 panels: a panel line (16 f32 columns, one
//! cache line) is one register, so a tile of 12 rows × 2 panels keeps 24 accumulators and, per
//! k, loads two lines and broadcasts twelve elements of x: 24 FMAs on 16 lanes. Also the
//! masked row update the bf16 and AMX kernels share.

use super::{LineF32, NR};
use std::arch::x86_64::*;

/// Rows per tile.
const MR: usize = 12;

/// y[rows × cols] += x[rows × kc] · panels, in tiles of 12 rows × 2 panels, each row tile
/// against every panel before the next. x has row stride `lda`, y row stride `ldc`; `panels`
/// is the first panel's k-block (kc lines) and the stride between panels, in lines.
///
/// # Safety
/// AVX-512 F/BW/VL are present; x holds `rows` rows of `lda` floats (kc of each read); each of
/// the cols/16 panels holds kc lines `stride` apart; y holds `rows` rows of `ldc`, the first
/// `cols` of each written.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip(
    x: *const f32,
    lda: usize,
    (panel, stride): (*const LineF32, usize),
    kc: usize,
    y: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let panels = cols.div_ceil(NR);
    for i in (0..rows).step_by(MR) {
        let (a, y) = (x.add(i * lda), y.add(i * ldc));
        for g in (0..panels).step_by(2) {
            let b = (panel.add(g * stride), stride);
            let (c, cols) = (y.add(g * NR), cols - g * NR);
            let two = g + 1 < panels;
            macro_rules! tiles {
                ($($r:literal)*) => {
                    match (rows - i, two) {
                        $(($r, true) => tile::<$r, 2>((a, lda), b, kc, c, ldc, cols),
                          ($r, false) => tile::<$r, 1>((a, lda), b, kc, c, ldc, cols),)*
                        (_, true) => tile::<MR, 2>((a, lda), b, kc, c, ldc, cols),
                        (_, false) => tile::<MR, 1>((a, lda), b, kc, c, ldc, cols),
                    }
                };
            }
            tiles!(1 2 3 4 5 6 7 8 9 10 11);
        }
    }
}

/// R rows × P panels (P ≤ 2) added into y's first `cols` columns (≤ 16·P).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn tile<const R: usize, const P: usize>(
    (a, lda): (*const f32, usize),
    (panel, stride): (*const LineF32, usize),
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for q in 0..kc {
        // Lines are 64-byte aligned.
        let b: [__m512; P] =
            std::array::from_fn(|p| _mm512_load_ps(panel.add(p * stride + q) as *const f32));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * lda + q));
            for (acc, b) in acc.iter_mut().zip(b) {
                *acc = _mm512_fmadd_ps(av, b, *acc);
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

/// row[..n] += v[..n] (n ≤ 16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) unsafe fn add_row(row: *mut f32, v: __m512, n: usize) {
    if n == NR {
        _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), v));
    } else if n > 0 {
        let mask = ((1u32 << n) - 1) as __mmask16;
        let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row), v);
        _mm512_mask_storeu_ps(row, mask, sum);
    }
}
