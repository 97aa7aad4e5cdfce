//! Rotary position embedding in HF's `rotate_half` convention: the first and second halves of
//! each head form the rotated pairs, inv_freq[k] = θ^(−2k/Dh), position ids 0..L−1 (+ cache offset).

use candle_core::{Device, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct Rope {
    /// [max_positions, Dh]: cos/sin of each frequency, repeated for both halves.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(theta: f64, head_dim: usize, max_positions: usize, device: &Device) -> Result<Self> {
        // f32 throughout, as HF computes its tables, so logits match to rounding.
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for pos in 0..max_positions {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_positions, head_dim), device)?,
            sin: Tensor::from_vec(sin, (max_positions, head_dim), device)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// x: [B, H, L, Dh] at absolute positions offset..offset+L → rotated, same shape.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_b, _h, l, dh) = x.dims4()?;
        if offset + l > self.max_positions() {
            candle_core::bail!(
                "position {} is beyond the rotary table ({} positions)",
                offset + l - 1,
                self.max_positions()
            );
        }
        let dtype = x.dtype();
        let cos = self.cos.narrow(0, offset, l)?.to_dtype(dtype)?;
        let sin = self.sin.narrow(0, offset, l)?.to_dtype(dtype)?;
        let x1 = x.narrow(D::Minus1, 0, dh / 2)?;
        let x2 = x.narrow(D::Minus1, dh / 2, dh / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::new(10000.0, 8, 16, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev)?;
        let y = rope.apply(&x, 3)?;
        let nx = x.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let ny = y.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!((nx - ny).abs() < 1e-4 * nx);
        let y0 = rope.apply(&x, 0)?.narrow(2, 0, 1)?;
        let d = (y0 - x.narrow(2, 0, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6);
        assert!(rope.apply(&x, 12).is_err());
        Ok(())
    }
}
