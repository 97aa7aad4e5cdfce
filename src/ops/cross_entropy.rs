//! Per-row cross-entropy in f32, no reduction: the loss modules decide how rows are weighted
//! and normalised. With V = 50257 every [N, V] intermediate of the composed form is tens of MB,
//! so on f32 CPU logits one custom op does each row in two passes:
//!
//!   forward   lse = m + ln Σ exp(x − m) (m = max x),  ce = lse − x[target]     saved: lse
//!   backward  dx = (exp(x − lse) − onehot(target)) · dce
//!
//! `cross_entropy_composed` is the reference and serves every other device and dtype.

use candle_core::{DType, Result, Shape, Tensor, D};

use rayon::prelude::*;

use super::cpu;
use super::custom::{self, Inputs, Kernel, Saved};

/// logits: [N, V], targets: [N] (u32) → CE per row, [N] f32.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if cpu::fusable(&[logits]) && targets.dtype() == DType::U32 && targets.device().is_cpu() {
        let (n, _v) = logits.dims2()?;
        if targets.dims() != [n] {
            candle_core::bail!(
                "{n} rows of logits but targets of shape {:?}",
                targets.dims()
            );
        }
        let op = FusedCrossEntropy {
            saved_lse: Saved::new("cross-entropy"),
        };
        return custom::apply(op, &[logits, targets]);
    }
    cross_entropy_composed(logits, targets)
}

/// The composed reference. log-softmax uses a detached max (it cancels in the value and carries
/// no gradient).
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [N, 1]
    let picked = shifted.gather(&targets.unsqueeze(1)?, D::Minus1)?; // [N, 1]
    (lse - picked)?.squeeze(1)
}

struct FusedCrossEntropy {
    /// log Σ exp(logits) of every row, from the forward pass.
    saved_lse: Saved<Vec<f32>>,
}

cpu::simd_fn! {
    /// `log_sum_exp` compiled for the vector units this CPU has (`cpu::simd`'s closure stayed
    /// out of line, in SSE code).
    fn log_sum_exp_on(x: &[f32]) -> f32 = log_sum_exp;
}

/// ln Σ e^x over a row, against its maximum.
#[inline(always)]
fn log_sum_exp(x: &[f32]) -> f32 {
    let m = cpu::max(x);
    let mut acc = [0f32; 8];
    for c in x.chunks(8) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += cpu::exp(x - m);
        }
    }
    m + acc.iter().sum::<f32>().ln()
}

/// (logits, targets).
impl Kernel for FusedCrossEntropy {
    fn name(&self, _arity: usize) -> &'static str {
        "fused-cross-entropy"
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let (x, t) = (inputs.f32(0)?, inputs.u32(1)?);
        let (n, v) = inputs.shape(0)?.dims2()?;
        if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target id {bad} is outside the vocabulary of {v}");
        }
        // One task per row: a row of V ≈ 50k is plenty of work.
        let lse: Vec<f32> = (0..n)
            .into_par_iter()
            .map(|r| log_sum_exp_on(&x[r * v..][..v]))
            .collect();
        let ce = lse
            .iter()
            .zip(t)
            .enumerate()
            .map(|(r, (&l, &t))| l - x[r * v + t as usize]);
        let ce: Vec<f32> = ce.collect();
        self.saved_lse.put(lse)?;
        Ok((ce, Shape::from(n)))
    }

    /// dx = (softmax(x) − onehot(t)) · dce; targets get no gradient.
    fn backward(&self, inputs: &[&Tensor], _ce: &Tensor, dce: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (logits, targets) = (inputs[0], inputs[1]);
        let (n, v) = logits.dims2()?;
        let t = targets.to_vec1::<u32>()?;
        let dce = dce.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * v];
        self.saved_lse.with(|lse| {
            cpu::with_data(logits, |xs| {
                cpu::par_rows(&mut dx, v, |r, dx| {
                    let (x, l, g) = (&xs[r * v..][..v], lse[r], dce[r]);
                    for (dx, &x) in dx.iter_mut().zip(x) {
                        *dx = cpu::exp(x - l) * g;
                    }
                    dx[t[r] as usize] -= g;
                });
                Ok(())
            })
        })?;
        Ok(vec![dx])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fused_check::{assert_fused_matches, Tolerance};
    use candle_core::{Device, Var};

    #[test]
    fn value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &dev)?;
        let t = Tensor::new(&[1u32, 2], &dev)?;
        let ce = cross_entropy(x.as_tensor(), &t)?;
        let row = [1.0f64, 2.0, 0.5];
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        assert!((ce.to_vec1::<f32>()?[0] as f64 - (lse - 2.0)).abs() < 1e-6);
        // d CE / d logits = softmax − onehot
        let g = ce.sum_all()?.backward()?;
        let g0: Vec<f32> = g.get(x.as_tensor()).expect("grad").get(0)?.to_vec1()?;
        let p1 = (2.0 - lse).exp();
        assert!((g0[1] as f64 - (p1 - 1.0)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (7, 1000);
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (n, v), &dev)?)?;
        let t = Tensor::new(&[0u32, 999, 5, 5, 123, 456, 789], &dev)?;
        let fused = cross_entropy(&x, &t)?;
        let composed = cross_entropy_composed(&x, &t)?;
        // Gradients are softmax − one-hot times a randn upstream, up to a few units: 1e-6 was a
        // handful of f32 ulps there and failed about one run in ten (1.19e-6 seen); 4e-6 is ~30.
        let tol = Tolerance::new(1e-5, 4e-6);
        assert_fused_matches("cross-entropy", &[&x], &fused, &composed, tol)?;
        assert!(cross_entropy(
            x.as_tensor(),
            &Tensor::new(&[0u32, 0, 0, 0, 0, 0, 1000], &dev)?
        )
        .is_err());
        Ok(())
    }
}
