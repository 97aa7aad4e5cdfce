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

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

use super::cpu;

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
    let x = x.contiguous()?;
    let op = FusedSoftmax {
        scale: scale as f32,
    };
    match bias {
        None => x.apply_op1(op),
        Some(b) => {
            let w = x.dim(D::Minus1)?;
            let rows = x.elem_count() / w.max(1);
            if b.dim(1)? != w || rows % b.dim(0)?.max(1) != 0 {
                candle_core::bail!("mask {:?} does not fit scores {:?}", b.dims(), x.dims());
            }
            x.apply_op2(&b.contiguous()?, op)
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

    fn forward(&self, x: &[f32], bias: Option<&[f32]>, shape: &Shape) -> Result<CpuStorage> {
        let w = shape.dims().last().copied().unwrap_or(1);
        let bias_rows = bias.map_or(1, |b| b.len() / w.max(1)).max(1);
        let mut out = vec![0f32; x.len()];
        cpu::par_rows(&mut out, w, |r, y| {
            let b = bias.map(|b| &b[(r % bias_rows) * w..][..w]);
            self.row(&x[r * w..][..w], b, y)
        });
        Ok(CpuStorage::F32(out))
    }

    /// dx = scale · y ⊙ (dy − Σ y·dy), row by row.
    fn backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
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
        cpu::tensor_like(dx, y)
    }
}

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            self.forward(cpu::slice(s, l)?, None, l.shape())?,
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(y, dy)?))
    }
}

impl CustomOp2 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (cpu::slice(s1, l1)?, cpu::slice(s2, l2)?);
        Ok((self.forward(x, Some(bias), l1.shape())?, l1.shape().clone()))
    }

    /// The mask is a constant (checked before the op was built): no gradient for it.
    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(y, dy)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Max |a − b| over all elements.
    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Value and gradient of the fused op against the composed reference, with a random
    /// upstream gradient so that Σ y·dy is not trivially constant.
    fn check(shape: (usize, usize, usize, usize), scale: f64, bias: Option<Tensor>) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, shape, &dev)?)?;
        let up = Tensor::randn(0f32, 1.0, shape, &dev)?;
        let fused = scaled_softmax(x.as_tensor(), scale, bias.as_ref())?;
        let composed = scaled_softmax_composed(x.as_tensor(), scale, bias.as_ref())?;
        assert!(max_diff(&fused, &composed)? < 1e-6);
        let g_fused = (&fused * &up)?.sum_all()?.backward()?;
        let g_comp = (&composed * &up)?.sum_all()?.backward()?;
        let (a, b) = (
            g_fused.get(&x).expect("grad"),
            g_comp.get(&x).expect("grad"),
        );
        let d = max_diff(a, b)?;
        assert!(d < 1e-5, "gradient differs by {d}");
        Ok(())
    }

    #[test]
    fn fused_softmax_matches_composed() -> Result<()> {
        check((2, 3, 5, 37), 1.0, None)?;
        check((1, 2, 4, 9), 0.125, None)
    }

    #[test]
    fn fused_masked_softmax_matches_composed() -> Result<()> {
        // [B, K, G·L, Lk] scores with G = 2 query heads per key head and a causal [L, L] mask.
        let (l, dev) = (6, Device::Cpu);
        let bias: Vec<f32> = (0..l * l)
            .map(|k| {
                if k % l <= k / l {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let bias = Tensor::from_vec(bias, (l, l), &dev)?;
        check((2, 3, 2 * l, l), 0.3, Some(bias))
    }
}
