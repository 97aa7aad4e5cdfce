//! Inference GEMM over a weight packed once: y = x·Wᵀ (+ b).
//!
//! A general GEMM repacks the weight into its microkernel's layout on every call; the weights of
//! a model that is only being run never change, so here they are packed once, on first use, into
//! panels of 16 output columns, each panel `k` rows of 16 contiguous floats (one cache line). The
//! microkernel keeps a 6 × 16 tile of y in twelve AVX2 registers and, per k, loads two vectors of
//! the panel and broadcasts six elements of x: twelve FMAs to eight loads, so the loop is bound by
//! FMA throughput. x is read in place, row-major; nothing of it is packed.
//!
//! Blocking: each rayon task owns a run of panels; within one, a panel's k-block (at most
//! `KC` × 16 floats) stays in L1 while every row block of x passes it, and the rows of x in use
//! (at most `MC` of them) stay in L2.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::cpu;

/// Output columns per panel (two AVX2 vectors).
const NR: usize = 16;
/// Rows of x per microkernel tile.
const MR: usize = 6;
/// Rows of x per L2 block, and the largest k-block: a 16 KiB k-block of a panel stays in L1.
const MC: usize = 288;
const KC: usize = 256;
/// Panels a row tile meets in turn: 256 columns, whose k-blocks (256 KiB) stay in L2.
const GROUP: usize = 16;

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

/// One cache line of a panel: the 16 columns' weights at one k.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// A weight of `n` output columns and `k` inputs in the microkernel's layout: panel p holds
/// columns 16p..16p+16 (zero past n), as k lines.
pub struct PackedWeight {
    lines: Vec<Line>,
    n: usize,
    k: usize,
}

impl PackedWeight {
    /// Packs w, stored [n, k] (`transposed` = false, HF `nn.Linear`) or [k, n] (true, GPT-2's
    /// `Conv1D`).
    pub fn new(w: &[f32], n: usize, k: usize, transposed: bool) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} elements is not {n} × {k}",
            w.len()
        );
        let panels = n.div_ceil(NR);
        let mut lines = vec![Line([0.0; NR]); panels * k];
        lines
            .par_chunks_mut(k.max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                for (c, j) in (p * NR..((p + 1) * NR).min(n)).enumerate() {
                    for (q, line) in panel.iter_mut().enumerate() {
                        line.0[c] = if transposed {
                            w[q * n + j]
                        } else {
                            w[j * k + q]
                        };
                    }
                }
            });
        Self { lines, n, k }
    }

    /// y[m × n] += x[m × k] · Wᵀ, y row-major (holding the bias, or zeros). Callers check
    /// `available()` first.
    pub fn matmul_acc(&self, x: &[f32], y: &mut [f32], m: usize) {
        let n = self.n;
        assert!(x.len() >= m * self.k && y.len() >= m * n);
        let y = SendPtr(y.as_mut_ptr());
        self.per_task(m, |panels| {
            for i0 in (0..m).step_by(MC) {
                let i1 = (i0 + MC).min(m);
                for p0 in panels.clone().step_by(GROUP) {
                    let group = p0..(p0 + GROUP).min(panels.end);
                    // SAFETY: this task alone writes the columns of its panels (the tasks'
                    // panel ranges are disjoint); rows i0..i1 lie inside y.
                    unsafe { self.panels_into(x, group, i0..i1, y.get().add(i0 * n + p0 * NR), n) }
                }
            }
        });
    }

    /// What greedy decoding needs from each row of x·Wᵀ + b, without writing the [m × n]
    /// product: the first maximum, its column and its log-probability max − ln Σⱼ exp(yⱼ).
    /// Each task folds its panels into per-row running statistics (the running sum rescaled
    /// whenever the maximum grows, in f64), and the tasks' statistics merge in column order, so
    /// the first maximum stays first. Callers check `available()` first.
    pub fn greedy_rows(&self, x: &[f32], bias: Option<&[f32]>, m: usize) -> Vec<Greedy> {
        assert!(x.len() >= m * self.k && bias.is_none_or(|b| b.len() == self.n));
        let parts = self.per_task(m, |panels| {
            let mut stats = vec![RowMax::EMPTY; m];
            let mut tile = vec![0f32; MC.min(m) * NR];
            for i0 in (0..m).step_by(MC) {
                let i1 = (i0 + MC).min(m);
                for p in panels.clone() {
                    let (j0, cols) = (p * NR, (self.n - p * NR).min(NR));
                    let tile = &mut tile[..(i1 - i0) * NR];
                    for row in tile.chunks_mut(NR) {
                        match bias {
                            Some(b) => row[..cols].copy_from_slice(&b[j0..j0 + cols]),
                            None => row.fill(0.0),
                        }
                    }
                    // SAFETY: the tile holds i1 − i0 rows of 16.
                    unsafe { self.panels_into(x, p..p + 1, i0..i1, tile.as_mut_ptr(), NR) }
                    cpu::simd(|| {
                        for (s, row) in stats[i0..i1].iter_mut().zip(tile.chunks(NR)) {
                            s.fold(&row[..cols], j0);
                        }
                    });
                }
            }
            stats
        });
        let mut total = vec![RowMax::EMPTY; m];
        for part in parts {
            for (t, s) in total.iter_mut().zip(part) {
                t.merge(s);
            }
        }
        total.into_iter().map(RowMax::greedy).collect()
    }

    /// Runs `task` on disjoint runs of panels in parallel (about four per thread), returning
    /// their results in panel order.
    fn per_task<R: Send>(&self, m: usize, task: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
        if m == 0 || self.n == 0 {
            return vec![];
        }
        let panels = self.n.div_ceil(NR);
        let threads = rayon::current_num_threads().max(1);
        let per_task = panels.div_ceil(4 * threads).max(1);
        (0..panels.div_ceil(per_task))
            .into_par_iter()
            .map(|t| task(t * per_task..((t + 1) * per_task).min(panels)))
            .collect()
    }

    /// out[rows × 16·|panels|] += x[rows] · panels, over every k-block, with `out` of row stride
    /// `ldc`. Within a k-block each 6-row tile of x meets every panel of the group in turn, so
    /// out is written in runs of up to 16·|panels| columns per row (a single 16-column strip
    /// of a wide output would touch one cache line per row, each in another page).
    ///
    /// # Safety
    /// `available()` holds; `out` addresses rows.len() rows of `ldc` floats, the first
    /// min(16·|panels|, n − 16·panels.start) of each written by no one else during the call.
    unsafe fn panels_into(
        &self,
        x: &[f32],
        panels: Range<usize>,
        rows: Range<usize>,
        out: *mut f32,
        ldc: usize,
    ) {
        let k = self.k;
        let cols = (self.n - panels.start * NR).min(panels.len() * NR);
        let lines = &self.lines[panels.start * k..panels.end * k];
        let kc = k.div_ceil(k.div_ceil(KC).max(1)).max(1);
        for q0 in (0..k).step_by(kc) {
            let q1 = (q0 + kc).min(k);
            #[cfg(target_arch = "x86_64")]
            avx2::strip(
                x[rows.start * k + q0..].as_ptr(),
                k,
                (lines[q0..].as_ptr() as *const f32, k * NR),
                q1 - q0,
                out,
                ldc,
                rows.len(),
                cols,
            );
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (q1, lines, out, ldc, cols);
        }
    }
}

/// The greedy choice of one row: its token and log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Greedy {
    pub token: u32,
    pub logprob: f32,
}

impl Greedy {
    /// From a whole row of logits: the first maximum, and max − logsumexp = −ln Σ exp(x − max).
    pub fn of(logits: &[f32]) -> Self {
        let max = cpu::simd(|| cpu::max(logits));
        let token = logits.iter().position(|&x| x == max).unwrap_or(0) as u32;
        let sum = cpu::simd(|| cpu::sum_exp(logits, max));
        Self {
            token,
            logprob: -sum.ln() as f32,
        }
    }
}

/// Running statistics of a row seen in pieces: the first maximum, where it is, Σ exp(x − max).
#[derive(Clone, Copy)]
struct RowMax {
    max: f32,
    arg: usize,
    sum: f64,
}

impl RowMax {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        arg: 0,
        sum: 0.0,
    };

    /// Takes in the columns j0.. of the row.
    fn fold(&mut self, piece: &[f32], j0: usize) {
        let max = cpu::max(piece);
        if max > self.max {
            let arg = piece.iter().position(|&x| x == max).unwrap_or(0);
            self.merge(Self {
                max,
                arg: j0 + arg,
                sum: cpu::sum_exp(piece, max),
            });
        } else {
            self.sum += cpu::sum_exp(piece, self.max);
        }
    }

    /// Combines with the statistics of columns after this one's.
    fn merge(&mut self, later: Self) {
        if later.max > self.max {
            self.sum = self.sum * ((self.max - later.max) as f64).exp() + later.sum;
            (self.max, self.arg) = (later.max, later.arg);
        } else if later.sum > 0.0 {
            self.sum += later.sum * ((later.max - self.max) as f64).exp();
        }
    }

    fn greedy(self) -> Greedy {
        Greedy {
            token: self.arg as u32,
            logprob: -self.sum.ln() as f32,
        }
    }
}

/// A packed weight shared by the clones of a layer, made on first use.
pub type PackedCache = Arc<std::sync::OnceLock<PackedWeight>>;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the wrapper (Sync), not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain triple loop, in both stored layouts, over shapes with every edge: rows not
    /// a multiple of 6 or of a row block, columns not a multiple of 16, k split into blocks.
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
            (6, 16, 8),
            (300, 35, 1300),
            (9, 4099, 21),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32() - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32() - 0.5).collect();
            let bias: Vec<f32> = (0..m * n).map(|_| rng.uniform_f32()).collect();
            for transposed in [false, true] {
                let at = |j: usize, p: usize| {
                    if transposed {
                        w[p * n + j]
                    } else {
                        w[j * k + p]
                    }
                };
                let mut y = bias.clone();
                PackedWeight::new(&w, n, k, transposed).matmul_acc(&x, &mut y, m);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 =
                            bias[i * n + j] + (0..k).map(|p| x[i * k + p] * at(j, p)).sum::<f32>();
                        let got = y[i * n + j];
                        assert!(
                            (got - want).abs() < 1e-3,
                            "({m},{n},{k}) transposed {transposed} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The fused greedy statistics against the written product reduced row by row: same token
    /// (the first of two tied maxima, which sit in different tasks' panels), log-probabilities
    /// within 1e-5, with and without a bias.
    #[test]
    fn greedy_rows_match_the_product() {
        if !available() {
            return;
        }
        let mut rng = crate::rng::Rng::seed(3);
        let (m, n, k) = (13, 100, 40);
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32()).collect();
        let mut w: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32() - 0.5).collect();
        // Column 5 wins every row (x ≥ 0), and column 70 ties with it exactly.
        for p in 0..k {
            w[5 * k + p] = 3.0;
            w[70 * k + p] = 3.0;
        }
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform_f32()).collect();
        let packed = PackedWeight::new(&w, n, k, false);
        for b in [None, Some(&bias[..])] {
            let mut y: Vec<f32> = (0..m)
                .flat_map(|_| b.map_or(vec![0.0; n], <[f32]>::to_vec))
                .collect();
            packed.matmul_acc(&x, &mut y, m);
            let fused = packed.greedy_rows(&x, b, m);
            for (i, g) in fused.iter().enumerate() {
                let want = Greedy::of(&y[i * n..(i + 1) * n]);
                assert_eq!(g.token, want.token, "row {i}");
                assert!(
                    (g.logprob - want.logprob).abs() < 1e-5,
                    "row {i}: {g:?} vs {want:?}"
                );
            }
            if b.is_none() {
                assert!(
                    fused.iter().all(|g| g.token == 5),
                    "the first of the tied maxima"
                );
            }
        }
    }
}
