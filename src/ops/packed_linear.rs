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

#[cfg(target_arch = "x86_64")]
mod avx2;
mod greedy;

pub use greedy::Greedy;

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
}
