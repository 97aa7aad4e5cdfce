//! One training forward: noised ids → hidden states → LM head on the scored rows only → loss.

use candle_core::Device;

use crate::diffusion::loss::{masked_loss, Loss, LossTargets};
use crate::error::Result;
use crate::model::{ids_tensor, LanguageModel};
use crate::ops::AttentionMask;

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
    let logits = model.logits_rows(&ids, mask, &targets.rows_tensor(device)?)?;
    Ok(masked_loss(&logits, targets)?)
}
