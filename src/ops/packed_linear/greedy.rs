//! Greedy decoding's reduction fused into the packed GEMM: the first maximum of each row of
//! x·Wᵀ + b and its log-probability, without writing the [m × n] product.

use super::{PackedWeight, MC, NR};
use crate::ops::cpu;
use crate::ops::gemm::{isa, Isa, MatRef};

impl PackedWeight {
    /// What greedy decoding needs from each row of x·Wᵀ + b, without writing the [m × n]
    /// product: the first maximum, its column and its log-probability max − ln Σⱼ exp(yⱼ).
    /// Each task folds its panels into per-row running statistics (the running sum rescaled
    /// whenever the maximum grows, in f64), and the tasks' statistics merge in column order, so
    /// the first maximum stays first.
    pub fn greedy_rows(&self, x: MatRef, bias: Option<&[f32]>) -> Vec<Greedy> {
        self.greedy_rows_on(isa::gemm_path(), x, bias)
    }

    /// `greedy_rows` on a given path, which this CPU must be able to run.
    pub fn greedy_rows_on(&self, path: Isa, x: MatRef, bias: Option<&[f32]>) -> Vec<Greedy> {
        self.check_path(path);
        x.check();
        assert!(x.cols == self.k && bias.is_none_or(|b| b.len() == self.n));
        let m = x.rows;
        let staged = self.stage_all(x);
        let parts = self.per_task(m, |panels| {
            let mut scratch = vec![];
            let mut stats = vec![RowMax::EMPTY; m];
            let mut tile = vec![0f32; MC.min(m) * NR];
            for i0 in (0..m).step_by(MC) {
                let i1 = (i0 + MC).min(m);
                let a = self.rows(x, staged.as_deref(), i0..i1, &mut scratch);
                for p in panels.clone() {
                    let (j0, cols) = (p * NR, (self.n - p * NR).min(NR));
                    let tile = &mut tile[..(i1 - i0) * NR];
                    for row in tile.chunks_mut(NR) {
                        match bias {
                            Some(b) => row[..cols].copy_from_slice(&b[j0..j0 + cols]),
                            None => row.fill(0.0),
                        }
                    }
                    let out = tile.as_mut_ptr();
                    // SAFETY: the tile holds i1 − i0 rows of 16.
                    unsafe { self.panels_into(path, a, p..p + 1, i1 - i0, out, NR) }
                    fold_rows_on(&mut stats[i0..i1], tile, cols, j0);
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
}

/// The greedy choice of one row: its token and log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Greedy {
    pub token: u32,
    pub logprob: f32,
}

impl Greedy {
    /// The first maximum of a whole row of logits, where only the token is wanted (AR decoding
    /// skips the Σ exp over the vocabulary that `of` adds).
    pub fn token_of(logits: &[f32]) -> u32 {
        first_max(logits).0
    }

    /// From a whole row of logits: the first maximum, and max − logsumexp = −ln Σ exp(x − max).
    pub fn of(logits: &[f32]) -> Self {
        let (token, max) = first_max(logits);
        let sum = cpu::simd(|| cpu::sum_exp(logits, max));
        Self {
            token,
            logprob: -sum.ln() as f32,
        }
    }
}

/// The row's maximum and the first column that holds it.
fn first_max(logits: &[f32]) -> (u32, f32) {
    let max = cpu::simd(|| cpu::max(logits));
    let token = logits.iter().position(|&x| x == max).unwrap_or(0) as u32;
    (token, max)
}

/// Running statistics of a row seen in pieces: the first maximum, where it is, Σ exp(x − max).
#[derive(Clone, Copy)]
struct RowMax {
    max: f32,
    arg: usize,
    sum: f64,
}

cpu::simd_fn! {
    /// `fold_rows` compiled for the vector units this CPU has (`cpu::simd`'s closure stayed out
    /// of line, in SSE code: the LM head of a 256-row canvas folds 12.6M logits a step).
    fn fold_rows_on(stats: &mut [RowMax], tile: &[f32], cols: usize, j0: usize) = fold_rows;
}

/// Each row's statistics take in the first `cols` of its tile row (of `NR`), columns j0...
#[inline(always)]
fn fold_rows(stats: &mut [RowMax], tile: &[f32], cols: usize, j0: usize) {
    for (s, row) in stats.iter_mut().zip(tile.chunks(NR)) {
        s.fold(&row[..cols], j0);
    }
}

impl RowMax {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        arg: 0,
        sum: 0.0,
    };

    /// Takes in the columns j0.. of the row.
    #[inline(always)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gemm::{runnable_paths, Data};

    /// The fused greedy statistics against the written product reduced row by row, for f32
    /// and bf16 weights packed for each path: same token (the first of two tied maxima, which
    /// sit in different tasks' panels), log-probabilities within 1e-5, with and without a bias.
    /// 40 rows reach the AMX kernel where the CPU has it.
    #[test]
    fn greedy_rows_match_the_product() {
        let mut rng = crate::rng::Rng::seed(3);
        for m in [13, 40] {
            let (n, k) = (100, 40);
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32()).collect();
            let mut w: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32() - 0.5).collect();
            // Column 5 wins every row (x ≥ 0), and column 70 ties with it exactly.
            for p in 0..k {
                w[5 * k + p] = 3.0;
                w[70 * k + p] = 3.0;
            }
            let w16: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform_f32()).collect();
            let xm = MatRef::row_major(Data::F32(&x), m, k);
            for path in runnable_paths().0 {
                for data in [Data::F32(&w), Data::Bf16(&w16)] {
                    let packed = PackedWeight::new_on(path, data, n, k, false);
                    for b in [None, Some(&bias[..])] {
                        let mut y: Vec<f32> = (0..m)
                            .flat_map(|_| b.map_or(vec![0.0; n], <[f32]>::to_vec))
                            .collect();
                        packed.matmul_acc_on(path, xm, &mut y);
                        let fused = packed.greedy_rows_on(path, xm, b);
                        for (i, g) in fused.iter().enumerate() {
                            let want = Greedy::of(&y[i * n..(i + 1) * n]);
                            assert_eq!(g.token, want.token, "{path} row {i}");
                            assert!(
                                (g.logprob - want.logprob).abs() < 1e-5,
                                "{path} row {i}: {g:?} vs {want:?}"
                            );
                        }
                        if b.is_none() {
                            assert!(
                                fused.iter().all(|g| g.token == 5),
                                "{path}: the first of the tied maxima"
                            );
                        }
                    }
                }
            }
        }
    }
}
