//! Fused CPU LayerNorm and RMSNorm with explicit backward passes (llm.c's layernorm_forward /
//! layernorm_backward). One op serves both: RMSNorm is LayerNorm without centring or bias.
//!
//!   forward   μ = mean(x) (0 for RMSNorm), rstd = 1/√(mean((x−μ)²) + eps),
//!             x̂ = (x−μ)·rstd,  y = x̂·w (+ b)                       saved: μ, rstd per row
//!   backward  g = dy·w,  dx = rstd·(g − mean(g) − x̂·mean(g·x̂))     (no mean(g) for RMSNorm)
//!             dw = Σ_rows dy·x̂,  db = Σ_rows dy
//!
//! The composed references are `LayerNorm::forward_composed` and `RmsNorm::forward_composed`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;

/// Per-row statistics the forward pass saves for the backward pass.
struct Stats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

pub struct FusedNorm {
    eps: f32,
    /// LayerNorm (subtract the mean, add a bias) or RMSNorm.
    center: bool,
    saved: Mutex<Option<Stats>>,
}

impl FusedNorm {
    pub fn new(eps: f64, center: bool) -> Self {
        Self {
            eps: eps as f32,
            center,
            saved: Mutex::new(None),
        }
    }

    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<CpuStorage> {
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
                cpu::simd(|| {
                    for (i, (y, st)) in y.chunks_mut(d).zip(stats.iter_mut()).enumerate() {
                        let x = &x[(c * chunk + i) * d..][..d];
                        let mean = if self.center {
                            cpu::sum(x) / d as f32
                        } else {
                            0.0
                        };
                        // Two passes, as the composed form: mean((x − μ)²), not mean(x²) − μ².
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = x - mean;
                        }
                        let rstd = 1.0 / (cpu::dot(y, y) / d as f32 + self.eps).sqrt();
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
                })
            });
        let (mean, rstd) = stats.into_iter().unzip();
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Some(Stats { mean, rstd });
        Ok(CpuStorage::F32(y))
    }

    /// (dx, dw, db); db is empty for RMSNorm.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let guard = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let Some(stats) = guard.as_ref() else {
            candle_core::bail!("norm backward before its forward");
        };
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let mut dx = vec![0f32; x.elem_count()];
        let chunk = cpu::rows_per_task(rows, d);
        let center = self.center;
        // Each task writes its rows of dx and returns its partial [dw | db].
        let dwb = cpu::with_data(x, |xs| {
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
        })?;
        let dx = cpu::tensor_like(dx, x)?;
        let dw = cpu::tensor_like(dwb[..d].to_vec(), w)?;
        let db = cpu::tensor_like(dwb[d..].to_vec(), w)?;
        Ok((dx, dw, db))
    }
}

/// RMSNorm: (x, weight).
impl CustomOp2 for FusedNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = self.forward(cpu::slice(s1, l1)?, cpu::slice(s2, l2)?, None)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// LayerNorm: (x, weight, bias).
impl CustomOp3 for FusedNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            cpu::slice(s1, l1)?,
            cpu::slice(s2, l2)?,
            cpu::slice(s3, l3)?,
        );
        Ok((self.forward(x, w, Some(b))?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::{LayerNorm, RmsNorm};
    use candle_core::{Device, Result, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Fused against composed: the value and the gradient of every input, under a random
    /// upstream gradient. `f(fused?)` runs the norm over the given variables.
    fn check(vars: &[&Var], f: impl Fn(bool) -> Result<Tensor>) -> Result<()> {
        let (fused, composed) = (f(true)?, f(false)?);
        assert!(max_diff(&fused, &composed)? < 1e-5);
        let up = Tensor::randn(0f32, 1.0, fused.shape(), &Device::Cpu)?;
        let gf = (&fused * &up)?.sum_all()?.backward()?;
        let gc = (&composed * &up)?.sum_all()?.backward()?;
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
            let d = max_diff(a, b)?;
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            assert!(d < 1e-5 * scale, "input {i}: gradient differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn fused_layer_norm_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 7, 48), &dev)? + 0.5)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 48, &dev)?)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        check(&[&x, &w, &b], |fused| match fused {
            true => ln.forward(x.as_tensor()),
            false => ln.forward_composed(x.as_tensor()),
        })
    }

    #[test]
    fn fused_rms_norm_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 9, 40), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 40, &dev)?)?;
        let n = RmsNorm::new(w.as_tensor().clone(), 1e-6);
        check(&[&x, &w], |fused| match fused {
            true => n.forward(x.as_tensor()),
            false => n.forward_composed(x.as_tensor()),
        })
    }
}
