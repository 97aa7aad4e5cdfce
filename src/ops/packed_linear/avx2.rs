//! The AVX2 microkernel of the packed GEMM: a 6 × 16 tile of y in twelve registers, per k two
//! vector loads of the panel and six broadcasts of x.

use super::{MR, NR};
use std::arch::x86_64::*;

/// y[rows × cols] += x[rows × kc] · panels, in 6-row tiles (a shorter last one), each tile
/// against every panel before the next tile. x has row stride `lda`, y row stride `ldc`;
/// `panels` is the first panel's k-block (kc lines of 16) and the stride between panels.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip(
    x: *const f32,
    lda: usize,
    (panel, panel_stride): (*const f32, usize),
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
                1 => tile::<1>(a, lda, b, kc, c, ldc, cols),
                2 => tile::<2>(a, lda, b, kc, c, ldc, cols),
                3 => tile::<3>(a, lda, b, kc, c, ldc, cols),
                4 => tile::<4>(a, lda, b, kc, c, ldc, cols),
                5 => tile::<5>(a, lda, b, kc, c, ldc, cols),
                _ => tile::<MR>(a, lda, b, kc, c, ldc, cols),
            }
        }
        i += MR;
    }
}

/// The R × 16 tile: R rows of x against one panel, added into y's first `cols` columns.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(
    a: *const f32,
    lda: usize,
    panel: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    for q in 0..kc {
        // Panel lines are 64-byte aligned.
        let b0 = _mm256_load_ps(panel.add(q * NR));
        let b1 = _mm256_load_ps(panel.add(q * NR + 8));
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
