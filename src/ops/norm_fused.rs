//! Fused CPU LayerNorm and RMSNorm with explicit backward passes (llm.c's layernorm_forward /
//! layernorm_backward). One op serves both: RMSNorm is LayerNorm without centring or bias.
//!
//!   forward   μ = mean(x) (0 for RMSNorm), rstd = 1/√(mean((x−μ)²) + eps),
//!             x̂ = (x−μ)·rstd,  y = x̂·w (+ b)                       saved: μ, rstd per row
//!   backward  g = dy·w,  dx = rstd·(g − mean(g) − x̂·mean(g·x̂))     (no mean(g) for RMSNorm)
//!             dw = Σ_rows dy·x̂,  db = Σ_rows dy
//!
//! The composed references are `LayerNorm::forward_composed` and `RmsNorm::forward_composed`.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::custom::{Inputs, Kernel, Saved};

/// Per-row statistics the forward pass saves for the backward pass.
struct Stats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

pub struct FusedNorm {
    eps: f32,
    /// LayerNorm (subtract the mean, add a bias) or RMSNorm.
    center: bool,
    saved: Saved<Stats>,
}

impl FusedNorm {
    pub fn new(eps: f64, center: bool) -> Self {
        Self {
            eps: eps as f32,
            center,
            saved: Saved::new("norm"),
        }
    }

    /// The rows of x, normalised; saves their statistics.
    fn normalise(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>> {
        let d = w.len();
        if d == 0 || !x.len().is_multiple_of(d) {
            candle_core::bail!("norm over {d} features of an input of {} values", x.len());
        }
        let rows = x.len() / d;
        let mut y = vec![0f32; x.len()];
        let mut stats = vec![(0f32, 0f32); rows];
        let chunk = cpu::rows_per_task(rows, d);
        y.par_chunks_mut(chunk * d)
            .zip(stats.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(c, (y, stats))| {
                let x = &x[c * chunk * d..][..y.len()];
                normalise_rows_on(x, w, b, self.center, self.eps, y, stats)
            });
        let (mean, rstd) = stats.into_iter().unzip();
        self.saved.put(Stats { mean, rstd })?;
        Ok(y)
    }
}

/// RMSNorm: (x, weight); LayerNorm: (x, weight, bias).
impl Kernel for FusedNorm {
    fn name(&self, arity: usize) -> &'static str {
        match arity {
            2 => "fused-rms-norm",
            _ => "fused-layer-norm",
        }
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let y = self.normalise(inputs.f32(0)?, inputs.f32(1)?, inputs.f32_if_any(2)?)?;
        Ok((y, inputs.shape(0)?.clone()))
    }

    /// (dx, dw) for RMSNorm, (dx, dw, db) for LayerNorm.
    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (x, w) = (inputs[0], inputs[1]);
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let mut dx = vec![0f32; x.elem_count()];
        let chunk = cpu::rows_per_task(rows, d);
        let center = self.center;
        // Each task writes its rows of dx and returns its partial [dw | db].
        let dwb = self.saved.with(|stats| {
            cpu::with_data(x, |xs| {
                cpu::with_data(w, |ws| {
                    cpu::with_data(dy, |dys| {
                        Ok(dx
                            .par_chunks_mut(chunk * d)
                            .enumerate()
                            .map(|(c, dx)| {
                                let mut acc = vec![0f32; 2 * d];
                                let (dw, db) = acc.split_at_mut(d);
                                let mut g = vec![0f32; d];
                                let mut xhat = vec![0f32; d];
                                for (i, dx) in dx.chunks_mut(d).enumerate() {
                                    let r = c * chunk + i;
                                    let (x, dy) = (&xs[r * d..][..d], &dys[r * d..][..d]);
                                    let (mean, rstd) = (stats.mean[r], stats.rstd[r]);
                                    for k in 0..d {
                                        xhat[k] = (x[k] - mean) * rstd;
                                        g[k] = dy[k] * ws[k];
                                        dw[k] += dy[k] * xhat[k];
                                        db[k] += dy[k];
                                    }
                                    let mg = if center { cpu::sum(&g) / d as f32 } else { 0.0 };
                                    let mgx = cpu::dot(&g, &xhat) / d as f32;
                                    for k in 0..d {
                                        dx[k] = rstd * (g[k] - mg - xhat[k] * mgx);
                                    }
                                }
                                acc
                            })
                            .reduce(
                                || vec![0f32; 2 * d],
                                |mut a, b| {
                                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                                    a
                                },
                            ))
                    })
                })
            })
        })?;
        let (dw, db) = dwb.split_at(d);
        let mut grads = vec![dx, dw.to_vec(), db.to_vec()];
        grads.truncate(inputs.len());
        Ok(grads)
    }
}

cpu::simd_fn! {
    /// y = (x − mean)·rstd·w (+ b) for each row of x (RMSNorm: mean 0 unless `center`), and
    /// each row's (mean, rstd) into `stats`; compiled for the vector units this CPU has
    /// (`cpu::simd`'s closure stayed out of line, in SSE code).
    fn normalise_rows_on(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        center: bool,
        eps: f32,
        y: &mut [f32],
        stats: &mut [(f32, f32)],
    ) {
        let d = w.len();
        for ((y, st), x) in y.chunks_mut(d).zip(stats.iter_mut()).zip(x.chunks(d)) {
            let mean = if center { cpu::sum(x) / d as f32 } else { 0.0 };
            // Two passes, as the composed form: mean((x − μ)²), not mean(x²) − μ².
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - mean;
            }
            let rstd = 1.0 / (cpu::dot(y, y) / d as f32 + eps).sqrt();
            match b {
                Some(b) => {
                    for ((y, &w), &b) in y.iter_mut().zip(w).zip(b) {
                        *y = *y * rstd * w + b;
                    }
                }
                None => {
                    for (y, &w) in y.iter_mut().zip(w) {
                        *y = *y * rstd * w;
                    }
                }
            }
            *st = (mean, rstd);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::fused_check::{assert_fused_matches, Tolerance};
    use crate::ops::{LayerNorm, RmsNorm};
    use candle_core::{Device, Result, Tensor, Var};

    const TOLERANCE: Tolerance = Tolerance::new(1e-5, 1e-5).relative_grads();

    #[test]
    fn fused_layer_norm_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 7, 48), &dev)? + 0.5)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 48, &dev)?)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let (fused, composed) = (ln.forward(&x)?, ln.forward_composed(&x)?);
        assert_fused_matches("layer norm", &[&x, &w, &b], &fused, &composed, TOLERANCE)
    }

    #[test]
    fn fused_rms_norm_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 9, 40), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 40, &dev)?)?;
        let n = RmsNorm::new(w.as_tensor().clone(), 1e-6);
        let (fused, composed) = (n.forward(&x)?, n.forward_composed(&x)?);
        assert_fused_matches("rms norm", &[&x, &w], &fused, &composed, TOLERANCE)
    }
}
