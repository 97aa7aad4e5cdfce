//! Linear and embedding layers that keep weights exactly as the HF checkpoint stores them, so that
//! saving, gradients and parameter names need no translation.

use candle_core::{Result, Tensor};

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

    /// x: [..., in] → [..., out]. Leading dimensions are flattened so one 2-D GEMM does the work.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
