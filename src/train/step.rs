//! One training forward: noised ids → hidden states → LM head on the scored rows only → loss.

use candle_core::{Device, Tensor};

use crate::diffusion::loss::{masked_loss, Loss, LossTargets};
use crate::error::Result;
use crate::model::LanguageModel;
use crate::ops::AttentionMask;

/// The model input as a [B, L] u32 tensor.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let l = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), l), device)?)
}

/// Loss of `targets` given input ids (x_t for diffusion, x0 for AR) under `mask`. The head runs
/// only on the rows that carry a target: with mean t ≈ 0.5 that halves the head's cost, the
/// largest single matmul of a small model.
pub fn forward_loss(
    model: &dyn LanguageModel,
    input: &[Vec<u32>],
    mask: &AttentionMask,
    targets: &LossTargets,
    device: &Device,
) -> Result<Loss> {
    let ids = ids_tensor(input, device)?;
    let hidden = model.hidden(&ids, mask, None)?;
    let (b, l, d) = hidden.dims3()?;
    let rows = hidden
        .reshape((b * l, d))?
        .index_select(&targets.rows_tensor(device)?, 0)?;
    let logits = model.head(&rows)?;
    Ok(masked_loss(&logits, targets)?)
}
