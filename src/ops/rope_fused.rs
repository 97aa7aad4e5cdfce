//! Fused CPU rotary embedding that also splits the heads: a projection's output [B, L, H·Dh] goes
//! in, the rotated heads [B, H, L, Dh] come out, in one pass. The composed form (`Rope::apply`
//! after a reshape and transpose) is a strided copy and seven elementwise nodes per call, each
//! with a full-size intermediate: several hundred small ops per forward of a 30-layer model.
//!
//!   forward   y₁ = x₁·cos − x₂·sin,  y₂ = x₂·cos + x₁·sin   (x₁, x₂: first and second half)
//!   backward  dx₁ = dy₁·cos + dy₂·sin,  dx₂ = dy₂·cos − dy₁·sin   (the inverse rotation)

use std::sync::Arc;

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::custom::{Inputs, Kernel};

pub struct FusedRope {
    /// [max_positions, Dh/2] tables of cos and sin of position × inv_freq.
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    /// Absolute position of the input's first row.
    pub offset: usize,
    pub heads: usize,
}

/// y = rotation of x by the angles whose cos and sin are given (sin negated: the inverse).
#[inline(always)]
fn rotate(x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    for k in 0..half {
        let s = sign * sin[k];
        y1[k] = x1[k] * cos[k] - x2[k] * s;
        y2[k] = x2[k] * cos[k] + x1[k] * s;
    }
}

impl FusedRope {
    /// (B, L, H, Dh) of a [B, L, H·Dh] input.
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize, usize)> {
        let (b, l, hd) = shape.dims3()?;
        let h = self.heads;
        if h == 0 || !hd.is_multiple_of(h) || !(hd / h).is_multiple_of(2) {
            candle_core::bail!("rope: width {hd} does not split into {h} heads of even size");
        }
        if self.cos.len() < (self.offset + l) * (hd / h / 2) {
            candle_core::bail!("rope: position {} is beyond the table", self.offset + l - 1);
        }
        Ok((b, l, h, hd / h))
    }

    /// The cos and sin of sequence position i.
    fn angles(&self, i: usize, half: usize) -> (&[f32], &[f32]) {
        let at = (self.offset + i) * half;
        (&self.cos[at..at + half], &self.sin[at..at + half])
    }
}

impl Kernel for FusedRope {
    fn name(&self, _arity: usize) -> &'static str {
        "fused-rope-heads"
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let (b, l, h, dh) = self.dims(inputs.shape(0)?)?;
        let x = inputs.f32(0)?;
        let mut y = vec![0f32; x.len()];
        // One task per (batch, head): its [L, Dh] block of the output is contiguous.
        y.par_chunks_mut(l * dh)
            .enumerate()
            .for_each(|(bh, block)| {
                let (bi, hi) = (bh / h, bh % h);
                for (i, row) in block.chunks_mut(dh).enumerate() {
                    let (cos, sin) = self.angles(i, dh / 2);
                    let from = (bi * l + i) * h * dh + hi * dh;
                    rotate(&x[from..from + dh], row, cos, sin, 1.0);
                }
            });
        Ok((y, Shape::from((b, h, l, dh))))
    }

    fn backward(&self, inputs: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let x = inputs[0];
        let (_b, l, h, dh) = self.dims(x.shape())?;
        let mut dx = vec![0f32; x.elem_count()];
        cpu::with_data(dy, |dy| {
            // One task per (batch, position): its H·Dh row of dx is contiguous.
            dx.par_chunks_mut(h * dh)
                .enumerate()
                .for_each(|(bi_i, row)| {
                    let (bi, i) = (bi_i / l, bi_i % l);
                    let (cos, sin) = self.angles(i, dh / 2);
                    for (hi, out) in row.chunks_mut(dh).enumerate() {
                        let from = ((bi * h + hi) * l + i) * dh;
                        rotate(&dy[from..from + dh], out, cos, sin, -1.0);
                    }
                });
            Ok(())
        })?;
        Ok(vec![dx])
    }
}
