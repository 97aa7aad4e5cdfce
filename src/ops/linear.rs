//! Linear and embedding layers that keep weights exactly as the HF checkpoint stores them, so that
//! saving, gradients and parameter names need no translation.

use candle_core::{Result, Tensor};

use super::cpu;
use super::linear_fused::FusedLinear;

/// How a linear weight is laid out. HF `nn.Linear` stores `[out, in]` (y = x·Wᵀ); GPT-2's `Conv1D`
/// stores `[in, out]` (y = x·W). The layout travels with the weight instead of transposing it at
/// load time, so the tensor stays the one the checkpoint named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    OutIn,
    InOut,
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: WeightLayout,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, layout: WeightLayout) -> Self {
        Self {
            weight,
            bias,
            layout,
        }
    }

    /// x: [..., in] → [..., out]. Leading dimensions are flattened so one 2-D GEMM does the work;
    /// on f32 CPU tensors that GEMM, the bias and the backward pass are one node (linear_fused.rs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut ts = vec![x, &self.weight];
        ts.extend(self.bias.as_ref());
        if cpu::fusable(&ts) {
            let op = FusedLinear {
                layout: self.layout,
            };
            let (x, w) = (x.contiguous()?, self.weight.contiguous()?);
            return match &self.bias {
                Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
                None => x.apply_op2(&w, op),
            };
        }
        self.forward_composed(x)
    }

    /// The composed reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows = x.elem_count() / d_in.max(1);
        let x2 = x.reshape((rows, d_in))?;
        let y = match self.layout {
            WeightLayout::OutIn => x2.matmul(&self.weight.t()?)?,
            WeightLayout::InOut => x2.matmul(&self.weight)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        let d_out = y.dim(1)?;
        if let Some(last) = out_dims.last_mut() {
            *last = d_out;
        }
        y.reshape(out_dims)
    }
}

/// Token (or position) embedding table, [rows, D].
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }

    /// ids: [B, L] (u32) → [B, L, D]. index_select carries a gradient to the table.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let d = self.weight.dim(1)?;
        self.weight
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Fused against composed in both weight layouts, with and without a bias: the value and
    /// the gradients of x, W and b.
    #[test]
    fn fused_linear_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (d_in, d_out) = (13, 21);
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            for with_bias in [false, true] {
                let shape = match layout {
                    WeightLayout::OutIn => (d_out, d_in),
                    WeightLayout::InOut => (d_in, d_out),
                };
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, d_in), &dev)?)?;
                let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
                let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, d_out, &dev)?)?;
                let bias = with_bias.then(|| b.as_tensor().clone());
                let lin = Linear::new(w.as_tensor().clone(), bias, layout);
                let (f, c) = (
                    lin.forward(x.as_tensor())?,
                    lin.forward_composed(x.as_tensor())?,
                );
                assert_eq!(f.dims(), [2, 5, d_out]);
                assert!(max_diff(&f, &c)? < 1e-5);
                let up = Tensor::randn(0f32, 1.0, f.shape(), &dev)?;
                let gf = (&f * &up)?.sum_all()?.backward()?;
                let gc = (&c * &up)?.sum_all()?.backward()?;
                let vars: &[&Var] = if with_bias { &[&x, &w, &b] } else { &[&x, &w] };
                for (i, v) in vars.iter().enumerate() {
                    let d = max_diff(gf.get(v).expect("grad"), gc.get(v).expect("grad"))?;
                    assert!(
                        d < 1e-5,
                        "{layout:?} bias {with_bias} input {i}: differs by {d}"
                    );
                }
            }
        }
        Ok(())
    }
}
