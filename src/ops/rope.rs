//! Rotary position embedding in HF's `rotate_half` convention: the first and second halves of
//! each head form the rotated pairs, inv_freq[k] = θ^(−2k/Dh), position ids 0..L−1 (+ cache offset).

use std::sync::Arc;

use candle_core::{Device, Result, Tensor, D};

use super::cpu;
use super::custom;
use super::rope_fused::FusedRope;

#[derive(Debug, Clone)]
pub struct Rope {
    /// [max_positions, Dh]: cos/sin of each frequency, repeated for both halves.
    cos: Tensor,
    sin: Tensor,
    /// [max_positions, Dh/2] host tables of the same values, for the fused CPU kernel.
    cos_half: Arc<Vec<f32>>,
    sin_half: Arc<Vec<f32>>,
}

impl Rope {
    pub fn new(theta: f64, head_dim: usize, max_positions: usize, device: &Device) -> Result<Self> {
        // f32 throughout, as HF computes its tables, so logits match to rounding.
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / head_dim as f32))
            .collect();
        let mut cos_half = Vec::with_capacity(max_positions * half);
        let mut sin_half = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos_half.push(angle.cos());
                sin_half.push(angle.sin());
            }
        }
        let both_halves = |t: &[f32]| -> Vec<f32> {
            t.chunks(half.max(1))
                .flat_map(|row| row.iter().chain(row))
                .copied()
                .collect()
        };
        Ok(Self {
            cos: Tensor::from_vec(both_halves(&cos_half), (max_positions, head_dim), device)?,
            sin: Tensor::from_vec(both_halves(&sin_half), (max_positions, head_dim), device)?,
            cos_half: Arc::new(cos_half),
            sin_half: Arc::new(sin_half),
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// A projection's output x: [B, L, H·Dh] at absolute positions offset..offset+L → its heads,
    /// rotated: [B, H, L, Dh]. One fused op on f32 CPU tensors.
    pub fn apply_heads(&self, x: &Tensor, heads: usize, offset: usize) -> Result<Tensor> {
        if cpu::fusable(&[x]) {
            let op = FusedRope {
                cos: self.cos_half.clone(),
                sin: self.sin_half.clone(),
                offset,
                heads,
            };
            return custom::apply(op, &[x]);
        }
        self.apply_heads_composed(x, heads, offset)
    }

    /// The composed reference of `apply_heads`.
    pub fn apply_heads_composed(&self, x: &Tensor, heads: usize, offset: usize) -> Result<Tensor> {
        let (b, l, hd) = x.dims3()?;
        let heads_first = x
            .reshape((b, l, heads, hd / heads.max(1)))?
            .transpose(1, 2)?;
        self.apply(&heads_first, offset)
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
    use crate::ops::fused_check::{assert_fused_matches, Tolerance};

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

    /// The fused head-splitting kernel against the composed reshape, transpose and rotation:
    /// value and input gradient, at an offset, with grouped heads of a batch of two.
    #[test]
    fn fused_apply_heads_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::new(10000.0, 8, 16, &dev)?;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 3 * 8), &dev)?)?;
        let (f, c) = (
            rope.apply_heads(&x, 3, 4)?,
            rope.apply_heads_composed(&x, 3, 4)?,
        );
        assert_eq!(f.dims(), [2, 3, 5, 8]);
        assert_fused_matches("rope", &[&x], &f, &c, Tolerance::new(1e-6, 1e-5))?;
        assert!(rope.apply_heads(x.as_tensor(), 3, 12).is_err());
        Ok(())
    }
}
