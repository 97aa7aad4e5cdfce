//! What attention may see, stated as intent. The model turns it into an additive bias; who built
//! it (a sampler, the annealing schedule of reference-semantics §1.5, a request) is not its concern.

use candle_core::{DType, Device, Result, Tensor};

#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// Query i sees keys j ≤ i (absolute positions, so it also serves a KV cache).
    Causal,
    /// Every query sees every key: the diffusion model's attention.
    Bidirectional,
    /// An explicit [L, L] additive bias (0 allowed, −∞ blocked), shared by the whole batch.
    Additive(Tensor),
}

impl AttentionMask {
    /// Builds an additive mask from a 0/1 "allowed" matrix, row-major [L, L]. Every query must see
    /// at least one key, or its softmax would be undefined.
    pub fn from_allowed(allowed: &[bool], l: usize, device: &Device) -> Result<Self> {
        if allowed.len() != l * l {
            candle_core::bail!(
                "attention matrix has {} entries, expected {l}×{l} = {}",
                allowed.len(),
                l * l
            );
        }
        if let Some(row) = (0..l).find(|&i| !allowed[i * l..(i + 1) * l].iter().any(|&a| a)) {
            candle_core::bail!("attention matrix row {row} blocks every key");
        }
        let bias: Vec<f32> = allowed
            .iter()
            .map(|&a| if a { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Ok(AttentionMask::Additive(Tensor::from_vec(
            bias,
            (l, l),
            device,
        )?))
    }

    /// The additive bias for `lq` queries at absolute positions offset.. against `lk` keys, or
    /// None when nothing is blocked.
    pub fn bias(
        &self,
        lq: usize,
        lk: usize,
        offset: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        match self {
            AttentionMask::Bidirectional => Ok(None),
            AttentionMask::Causal if lq == 1 => Ok(None),
            AttentionMask::Causal => {
                let bias: Vec<f32> = (0..lq)
                    .flat_map(|i| {
                        (0..lk).map(move |j| {
                            if j <= offset + i {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                Ok(Some(
                    Tensor::from_vec(bias, (lq, lk), device)?.to_dtype(dtype)?,
                ))
            }
            AttentionMask::Additive(t) => {
                if offset != 0 || t.dims() != [lq, lk] {
                    candle_core::bail!(
                        "explicit attention matrix has shape {:?}, the forward needs [{lq}, {lk}] at offset 0",
                        t.dims()
                    );
                }
                Ok(Some(t.to_device(device)?.to_dtype(dtype)?))
            }
        }
    }
}
