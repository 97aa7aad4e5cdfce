//! Per-row cross-entropy in f32, no reduction: the loss modules decide how rows are weighted
//! and normalised.

use candle_core::{DType, Result, Tensor, D};

/// logits: [N, V], targets: [N] (u32) → CE per row, [N] f32. log-softmax is composed with a
/// detached max (it cancels in the value and carries no gradient).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [N, 1]
    let picked = shifted.gather(&targets.unsqueeze(1)?, D::Minus1)?; // [N, 1]
    (lse - picked)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
