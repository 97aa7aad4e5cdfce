//! The reference's multiple-choice scorer, `eval_forward` (reference-semantics §3.1): a T-point
//! Monte-Carlo estimate of the masked-token loss of an answer given its context. For
//! t = T, T−1, …, 1 (the reference's order) one random mask hides each answer token with
//! probability t/T; the shifted cross-entropy over the hidden tokens is averaged (0 when none is
//! hidden); the score is the sum over t divided by T. Unweighted: no 1/t. Lower is better.

use candle_core::Device;

use crate::diffusion::loss::{masked_loss, LossTargets};
use crate::diffusion::noise::mask_tokens;
use crate::error::Result;
use crate::model::{ids_tensor, LanguageModel};
use crate::ops::AttentionMask;
use crate::rng::Rng;

/// The per-t losses (in the order t = T..1) and the score of one sequence. `draws[k]` are the
/// uniforms of step k, one per position; context positions (`src`) are never masked.
pub fn mc_score_with_draws(
    model: &dyn LanguageModel,
    ids: &[u32],
    src: &[bool],
    mask_id: u32,
    draws: &[Vec<f32>],
    device: &Device,
) -> Result<(Vec<f32>, f32)> {
    let steps = draws.len();
    let mut per_t = Vec::with_capacity(steps);
    for (k, draw) in draws.iter().enumerate() {
        let rate = (steps - k) as f32 / steps as f32;
        let x_t = vec![mask_tokens(ids, draw, rate, src, mask_id).x_t];
        let targets = LossTargets::diffusion(&[ids.to_vec()], &x_t, &[rate], mask_id, true);
        if targets.is_empty() {
            per_t.push(0.0);
            continue;
        }
        let input = ids_tensor(&x_t, device)?;
        let logits = model.logits_rows(
            &input,
            &AttentionMask::Bidirectional,
            &targets.rows_tensor(device)?,
        )?;
        per_t.push(masked_loss(&logits, &targets)?.unweighted);
    }
    let score = per_t.iter().sum::<f32>() / steps as f32;
    Ok((per_t, score))
}

/// The same with draws taken from `rng`, T steps.
pub fn mc_score(
    model: &dyn LanguageModel,
    ids: &[u32],
    src: &[bool],
    mask_id: u32,
    steps: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<f32> {
    let draws: Vec<Vec<f32>> = (0..steps)
        .map(|_| ids.iter().map(|_| rng.uniform_f32()).collect())
        .collect();
    Ok(mc_score_with_draws(model, ids, src, mask_id, &draws, device)?.1)
}
