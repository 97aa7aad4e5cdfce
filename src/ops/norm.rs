//! LayerNorm (GPT-2) and RMSNorm (LLaMA) over the last dimension. The composed forms
//! (`forward_composed`) build them from candle primitives and serve every device and dtype; on
//! f32 CPU tensors one custom op per norm does the row in two passes (norm_fused.rs).

use candle_core::{DType, Result, Tensor, D};

use super::cpu;
use super::custom;
use super::norm_fused::FusedNorm;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// (x − mean) / √(var + eps) · w + b over the last dimension, computed in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu::fusable(&[x, &self.weight, &self.bias]) {
            let op = FusedNorm::new(self.eps, true);
            return custom::apply(op, &[x, &self.weight, &self.bias]);
        }
        self.forward_composed(x)
    }

    /// The composed reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// x / √(mean(x²) + eps) · w, computed in f32 as HF's LlamaRMSNorm does.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu::fusable(&[x, &self.weight]) {
            let op = FusedNorm::new(self.eps, false);
            return custom::apply(op, &[x, &self.weight]);
        }
        self.forward_composed(x)
    }

    /// The composed reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f32, 2.0, 4.0], [0.5, -1.0, 3.0]], &dev)?;
        let w = Var::new(&[1.5f32, 0.5, 2.0], &dev)?;
        let b = Var::new(&[0.1f32, 0.2, 0.3], &dev)?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let y = ln.forward(x.as_tensor())?;
        let row = [1.0f32, 2.0, 4.0];
        let m = row.iter().sum::<f32>() / 3.0;
        let v = row.iter().map(|r| (r - m) * (r - m)).sum::<f32>() / 3.0;
        let want0 = (1.0 - m) / (v + 1e-5).sqrt() * 1.5 + 0.1;
        let got0 = y.get(0)?.get(0)?.to_scalar::<f32>()?;
        assert!((got0 - want0).abs() < 1e-5);
        let grads = y.sqr()?.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            let g = grads.get(v.as_tensor()).expect("gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }
}
