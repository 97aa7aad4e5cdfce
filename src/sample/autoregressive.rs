//! The autoregressive baseline every DLM is compared with: causal attention, a KV cache, one token
//! per forward.

use candle_core::{Device, Tensor};

use super::filter::{choose_token, TokenChoice};
use crate::error::{Error, Result};
use crate::model::{KvCache, LanguageModel};
use crate::ops::AttentionMask;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct ArOptions {
    pub max_new_tokens: usize,
    pub choice: TokenChoice,
    /// Generation ends after emitting any of these (the token is included in the output).
    pub stop_ids: Vec<u32>,
}

/// Last-position logits of `ids` continuing the cached sequence, as a vector.
fn next_logits(
    model: &dyn LanguageModel,
    ids: &[u32],
    cache: &mut KvCache,
    device: &Device,
) -> candle_core::Result<Vec<f32>> {
    // A token (or a short prompt): the pool's threads spin as a team between its ~200 small
    // products.
    let step = || {
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let hidden = model.hidden(&input, &AttentionMask::Causal, Some(cache))?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?;
        model
            .head(&last)?
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()
    };
    crate::ops::team::with_team_if_small(device, ids.len(), step)
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` as each one is chosen.
/// Returns the new tokens.
pub fn generate(
    model: &dyn LanguageModel,
    prompt: &[u32],
    opts: &ArOptions,
    rng: &mut Rng,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let cfg = model.config();
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if prompt.len() + opts.max_new_tokens > cfg.max_position_embeddings {
        return Err(Error::Input(format!(
            "prompt ({} tokens) + {} new tokens exceeds the model's context of {} positions",
            prompt.len(),
            opts.max_new_tokens,
            cfg.max_position_embeddings
        )));
    }
    let mut cache = KvCache::with_capacity(cfg.num_layers, prompt.len() + opts.max_new_tokens);
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let mut logits = next_logits(model, prompt, &mut cache, device)?;
    for _ in 0..opts.max_new_tokens {
        let token = choose_token(&logits, opts.choice, rng);
        out.push(token);
        on_token(token);
        if opts.stop_ids.contains(&token) || out.len() == opts.max_new_tokens {
            break;
        }
        logits = next_logits(model, &[token], &mut cache, device)?;
    }
    Ok(out)
}
