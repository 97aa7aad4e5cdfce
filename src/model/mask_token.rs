//! The diffusion [MASK] token (reference-semantics §1.2): reuse an existing id, as DiffuGPT-S and
//! DiffuLLaMA do, or add a new row, as DiffuGPT-M does.

use candle_core::{DType, Tensor};

use super::{Architecture, ModelConfig, Weights};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// DiffuGPT-S reuses GPT-2's `------------`.
pub const DIFFUGPT_S_MASK_ID: u32 = 10541;
/// DiffuGPT-M appends `[¨M¨]` after GPT-2's 50257 tokens.
pub const DIFFUGPT_M_MASK_ID: u32 = 50257;
/// DiffuLLaMA reuses LLaMA-2's `ти`.
pub const DIFFULLAMA_MASK_ID: u32 = 811;

/// The mask id the paper used for this vocabulary, when a checkpoint does not record one.
pub fn known_mask_id(config: &ModelConfig) -> Option<u32> {
    match (config.arch, config.vocab_size) {
        (Architecture::Gpt2, 50257) => Some(DIFFUGPT_S_MASK_ID),
        (Architecture::Gpt2, 50258) => Some(DIFFUGPT_M_MASK_ID),
        (Architecture::Llama, 32000) => Some(DIFFULLAMA_MASK_ID),
        _ => None,
    }
}

/// The embedding and (untied) head matrices, by HF name.
fn vocab_matrices(config: &ModelConfig) -> Vec<&'static str> {
    let (embed, head) = match config.arch {
        Architecture::Gpt2 => ("transformer.wte.weight", "lm_head.weight"),
        Architecture::Llama | Architecture::Dream => {
            ("model.embed_tokens.weight", "lm_head.weight")
        }
        Architecture::Llada => (
            "model.transformer.wte.weight",
            "model.transformer.ff_out.weight",
        ),
    };
    if config.tie_word_embeddings {
        vec![embed]
    } else {
        vec![embed, head]
    }
}

/// Sets an existing id as the mask token.
pub fn reuse_mask_token(config: &mut ModelConfig, id: u32) -> Result<()> {
    if id as usize >= config.vocab_size {
        return Err(Error::Input(format!(
            "mask token id {id} is out of vocabulary (size {})",
            config.vocab_size
        )));
    }
    config.mask_token_id = Some(id);
    Ok(())
}

/// Appends a new token row to the embedding (and the head, if untied), initialised as the mean of
/// the old rows plus N(0, 1/√D) noise (the paper's `_noisy_mean_initialization`), and records it
/// as the mask token. Returns the new id.
pub fn add_mask_token(
    config: &mut ModelConfig,
    weights: &mut Weights,
    rng: &mut Rng,
) -> Result<u32> {
    let id = config.vocab_size as u32;
    for name in vocab_matrices(config) {
        let m = weights
            .get(name)
            .ok_or_else(|| {
                Error::checkpoint(weights.source(), format!("tensor `{name}` is missing"))
            })?
            .clone();
        let (_v, d) = m.dims2()?;
        let std = 1.0 / (d as f64).sqrt();
        let noise: Vec<f32> = (0..d).map(|_| (rng.normal() * std) as f32).collect();
        let mean = m.to_dtype(DType::F32)?.mean_keepdim(0)?;
        let row = (mean + Tensor::from_vec(noise, (1, d), m.device())?)?.to_dtype(m.dtype())?;
        weights.insert(name, Tensor::cat(&[&m, &row], 0)?);
    }
    config.vocab_size += 1;
    config.mask_token_id = Some(id);
    Ok(id)
}
