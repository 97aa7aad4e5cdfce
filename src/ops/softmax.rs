//! Softmax over the last dimension, optionally fused with the attention score scale and the
//! additive mask: y = softmax(scale·x + bias). The composed reference (`scaled_softmax_composed`)
//! builds it from candle primitives and serves every device; on f32 CPU tensors one custom op
//! does it per row in a single pass and saves only y for the backward pass:
//!
//!   forward   z = scale·x + bias[r mod L],  y = exp(z − max z) / Σ exp(z − max z)
//!   backward  dx = scale · y ⊙ (dy − Σ y·dy)        (saved: y, the op's own output)
//!
//! The bias is a constant mask. When it does carry a gradient (nothing in dlm builds one), the
//! composed path runs so that its gradient is not silently dropped.

use candle_core::{Result, Shape, Tensor, D};

use super::cpu;
use super::custom::{self, Inputs, Kernel};

/// Numerically stable softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    scaled_softmax(x, 1.0, None)
}

/// softmax(scale·x + bias) over the last dimension. x: [..., R, W]; bias: [R', W] broadcast over
/// everything before it, with R a multiple of R' (attention scores [B, K, G·L, Lk] and an [L, Lk]
/// mask, query row r using bias row r mod L).
pub fn scaled_softmax(x: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias_ok = bias.is_none_or(|b| !b.track_op() && b.rank() == 2);
    if !(cpu::fusable(&[x]) && bias.is_none_or(|b| cpu::fusable(&[b])) && bias_ok) {
        return scaled_softmax_composed(x, scale, bias);
    }
    let op = FusedSoftmax {
        scale: scale as f32,
    };
    match bias {
        None => custom::apply(op, &[x]),
        Some(b) => {
            let w = x.dim(D::Minus1)?;
            let rows = x.elem_count() / w.max(1);
            if b.dim(1)? != w || !rows.is_multiple_of(b.dim(0)?.max(1)) {
                candle_core::bail!("mask {:?} does not fit scores {:?}", b.dims(), x.dims());
            }
            custom::apply(op, &[x, b])
        }
    }
}

/// The composed reference: any device and dtype, gradients by candle's autograd. The max is
/// detached: subtracting any constant leaves softmax unchanged, so it carries no gradient.
pub fn scaled_softmax_composed(x: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let z = if scale == 1.0 {
        x.clone()
    } else {
        (x * scale)?
    };
    let z = match bias {
        Some(b) => {
            let (rb, w) = b.dims2()?;
            let lead = z.elem_count() / (rb * w).max(1);
            z.reshape((lead, rb, w))?
                .broadcast_add(b)?
                .reshape(x.shape())?
        }
        None => z,
    };
    let max = z.max_keepdim(D::Minus1)?.detach();
    let e = z.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

struct FusedSoftmax {
    scale: f32,
}

impl FusedSoftmax {
    /// One row: y = softmax(scale·x + bias). `y` doubles as the scratch for z.
    fn row(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        match bias {
            Some(b) => {
                for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                    *y = self.scale * x + b;
                }
            }
            None => {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = self.scale * x;
                }
            }
        }
        let m = cpu::max(y);
        for y in y.iter_mut() {
            *y = cpu::exp(*y - m);
        }
        let inv = 1.0 / cpu::sum(y);
        for y in y.iter_mut() {
            *y *= inv;
        }
    }
}

/// (x) or (x, mask).
impl Kernel for FusedSoftmax {
    fn name(&self, arity: usize) -> &'static str {
        match arity {
            1 => "fused-softmax",
            _ => "fused-masked-softmax",
        }
    }

    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)> {
        let (x, bias, shape) = (inputs.f32(0)?, inputs.f32_if_any(1)?, inputs.shape(0)?);
        let w = shape.dims().last().copied().unwrap_or(1);
        let bias_rows = bias.map_or(1, |b| b.len() / w.max(1)).max(1);
        let mut out = vec![0f32; x.len()];
        cpu::par_rows(&mut out, w, |r, y| {
            let b = bias.map(|b| &b[(r % bias_rows) * w..][..w]);
            self.row(&x[r * w..][..w], b, y)
        });
        Ok((out, shape.clone()))
    }

    /// dx = scale · y ⊙ (dy − Σ y·dy), row by row. The mask is a constant (checked before the op
    /// was built): no gradient for it.
    fn backward(&self, _inputs: &[&Tensor], y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>> {
        let w = y.dim(D::Minus1)?;
        let mut dx = vec![0f32; y.elem_count()];
        cpu::with_data(y, |ys| {
            cpu::with_data(dy, |dys| {
                cpu::par_rows(&mut dx, w, |r, dx| {
                    let (y, dy) = (&ys[r * w..][..w], &dys[r * w..][..w]);
                    let s = cpu::dot(y, dy);
                    for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                        *dx = self.scale * y * (dy - s);
                    }
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
    use crate::ops::AttentionMask;
    use candle_core::{DType, Device, Var};

    /// Value and gradient of the fused op against the composed reference.
    fn check(shape: (usize, usize, usize, usize), scale: f64, bias: Option<Tensor>) -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, shape, &Device::Cpu)?)?;
        let fused = scaled_softmax(&x, scale, bias.as_ref())?;
        let composed = scaled_softmax_composed(&x, scale, bias.as_ref())?;
        let tol = Tolerance::new(1e-6, 1e-5);
        assert_fused_matches("softmax", &[&x], &fused, &composed, tol)
    }

    #[test]
    fn fused_softmax_matches_composed() -> Result<()> {
        check((2, 3, 5, 37), 1.0, None)?;
        check((1, 2, 4, 9), 0.125, None)
    }

    #[test]
    fn fused_masked_softmax_matches_composed() -> Result<()> {
        // [B, K, G·L, Lk] scores with G = 2 query heads per key head and a causal [L, L] mask.
        let l = 6;
        let bias = AttentionMask::Causal.bias(l, l, 0, DType::F32, &Device::Cpu)?;
        check((2, 3, 2 * l, l), 0.3, bias)
    }
}
