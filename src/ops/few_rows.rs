//! y = x·Wᵀ (+ y) for a few rows of x and a weight stored [out, in], as dot products: every
//! output is a row of x against a row of W, both contiguous, so nothing is packed. The general
//! GEMM packs all of W on every call, which costs as much as the arithmetic when x has a few
//! dozen rows: the denoising steps of a cached block (about 33 rows) and the LM head on the
//! positions still undecided. Blocks of 4 rows of x × 3 rows of W keep 12 AVX2 accumulators in
//! registers, so the loop is bound by FMA throughput, not by loads.

use rayon::prelude::*;

/// Rows of x up to which the dot-product kernel beats the packing GEMM on the SmolLM2-135M
/// shapes (`dlm bench forward --seq N`: 0.68× the time at 33 rows, 0.91× at 128; slower at 257).
pub const MAX_ROWS: usize = 128;

/// Whether this CPU runs the kernel (AVX2 and FMA, checked once at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// y[m × n] (+)= x[m × k] · w[n × k]ᵀ; y row-major, already holding the bias when `accumulate`.
/// Splits the n outputs of every row across rayon tasks. Callers check `available()` first.
pub fn matmul_nt(x: &[f32], w: &[f32], y: &mut [f32], (m, n, k): (usize, usize, usize)) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    // Columns of y per task: whole 3-blocks, about 32 KiB of W each.
    let per_task = (8192 / k.max(1)).max(1).div_ceil(3) * 3;
    let tasks = n.div_ceil(per_task);
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| {
        let (j0, j1) = (t * per_task, ((t + 1) * per_task).min(n));
        let y = y_ptr;
        // SAFETY: `available()` was checked by the caller; task t writes only columns j0..j1 of
        // y, and every index stays inside the slices asserted above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::columns(x, w, y.0, (m, n, k), j0..j1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (y, j0, j1);
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Columns `cols` of y for every row, in 4 × 3 blocks with 1-wide edges.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn columns(
        x: &[f32],
        w: &[f32],
        y: *mut f32,
        (m, n, k): (usize, usize, usize),
        cols: Range<usize>,
    ) {
        let mut j = cols.start;
        while j < cols.end {
            let nr = if cols.end - j >= 3 { 3 } else { 1 };
            let mut i = 0;
            while i < m {
                let mr = if m - i >= 4 { 4 } else { 1 };
                let (xp, wp, yp) = (
                    x.as_ptr().add(i * k),
                    w.as_ptr().add(j * k),
                    y.add(i * n + j),
                );
                match (mr, nr) {
                    (4, 3) => block::<4, 3>(xp, wp, yp, n, k),
                    (4, _) => block::<4, 1>(xp, wp, yp, n, k),
                    (_, 3) => block::<1, 3>(xp, wp, yp, n, k),
                    _ => block::<1, 1>(xp, wp, yp, n, k),
                }
                i += mr;
            }
            j += nr;
        }
    }

    /// y[r][c] += Σ_k x[r][k]·w[c][k] for r < MR, c < NR (y row stride `n`, x and w stride k).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const MR: usize, const NR: usize>(
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        n: usize,
        k: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let k8 = k - k % 8;
        let mut p = 0;
        while p < k8 {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(c * k + p));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * k + p));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, *v, *a);
                }
            }
            p += 8;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut s = hsum(*a);
                for q in k8..k {
                    s += *x.add(r * k + q) * *w.add(c * k + q);
                }
                *y.add(r * n + c) += s;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain triple loop, over shapes with every edge case: rows not a multiple of 4,
    /// columns not a multiple of 3 or of a task, k not a multiple of 8.
    #[test]
    fn matches_the_definition() {
        if !available() {
            return;
        }
        let mut rng = crate::rng::Rng::seed(7);
        for (m, n, k) in [
            (1, 1, 1),
            (5, 7, 13),
            (33, 200, 64),
            (4, 3, 8),
            (9, 4099, 21),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32() - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32() - 0.5).collect();
            let bias: Vec<f32> = (0..m * n).map(|_| rng.uniform_f32()).collect();
            let mut y = bias.clone();
            matmul_nt(&x, &w, &mut y, (m, n, k));
            for i in 0..m {
                for j in 0..n {
                    let want: f32 =
                        bias[i * n + j] + (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum::<f32>();
                    let got = y[i * n + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "({m},{n},{k})[{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
