//! Activations. candle's unary `gelu` (tanh approximation) and `silu` both have backward rules.

use candle_core::{Result, Tensor};

/// GPT-2's `gelu_new`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), which is candle's `gelu`.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// LLaMA's SiLU, x·σ(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_new_matches_formula() -> Result<()> {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = Tensor::new(&xs, &Device::Cpu)?;
        let got = gelu_new(&t)?.to_vec1::<f32>()?;
        for (x, g) in xs.iter().zip(got) {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            assert!((g - want).abs() < 1e-6, "gelu_new({x}) = {g}, want {want}");
        }
        Ok(())
    }
}
