//! A base model made ready to train as a DLM: its config, weights and tokenizer, with the
//! diffusion mask token set on model and tokenizer alike.

use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::mask_token::{add_mask_token, reuse_mask_token};
use crate::model::{load_dir, ModelConfig, Weights};
use crate::rng::Rng;

/// The token added when a model gets a new mask row.
pub const NEW_MASK_TOKEN: &str = "<|mask|>";

/// Seeds the new mask row's draw apart from other streams of the run's seed.
const MASK_ROW_STREAM: u64 = 0x6d61_736b;

/// How to choose the mask token; without one, the id the model records, else a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskChoice {
    /// Add a row (and [`NEW_MASK_TOKEN`] to the tokenizer).
    New,
    /// Reuse an existing id.
    Reuse(u32),
}

impl FromStr for MaskChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "new" => Ok(Self::New),
            id => id
                .parse()
                .map(Self::Reuse)
                .map_err(|_| format!("the mask token is an id or `new`, not `{id}`")),
        }
    }
}

/// Sets the diffusion mask token on a model and its tokenizer: reuse an id or add a new row.
pub fn set_mask_token(
    choice: Option<MaskChoice>,
    config: &mut ModelConfig,
    weights: &mut Weights,
    tokenizer: &mut Tokenizer,
    seed: u64,
) -> Result<u32> {
    match choice {
        Some(MaskChoice::New) => {}
        Some(MaskChoice::Reuse(id)) => {
            reuse_mask_token(config, id)?;
            return Ok(id);
        }
        None => {
            if let Some(id) = config.mask_token_id {
                return Ok(id);
            }
        }
    }
    if tokenizer.vocab_size() != config.vocab_size {
        return Err(Error::Input(format!(
            "cannot add a mask token: the tokenizer has {} tokens but the model {}; reuse an \
             existing id as the mask token",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let id = add_mask_token(config, weights, &mut Rng::seed(seed ^ MASK_ROW_STREAM))?;
    let tok_id = tokenizer.add_special_token(NEW_MASK_TOKEN)?;
    if tok_id != id {
        return Err(Error::Input(format!(
            "the tokenizer gave the new mask token id {tok_id}, the model {id}"
        )));
    }
    Ok(id)
}

/// The mask id of a tokenizer trained for a model from scratch: its [`NEW_MASK_TOKEN`], added if
/// it has none.
pub fn new_mask_id(tokenizer: &mut Tokenizer) -> Result<u32> {
    match tokenizer.token_to_id(NEW_MASK_TOKEN) {
        Some(id) => Ok(id),
        None => tokenizer.add_special_token(NEW_MASK_TOKEN),
    }
}

/// A base model directory, ready to train as a DLM: config, weights, tokenizer and mask id.
pub fn load_base(
    base: &Path,
    mask: Option<MaskChoice>,
    seed: u64,
) -> Result<(ModelConfig, Weights, Tokenizer, u32)> {
    let loaded = load_dir(base, DType::F32, &Device::Cpu)?;
    let (mut config, mut weights) = (loaded.config, loaded.weights);
    if crate::model::quantized::is_quantized(&weights) {
        return Err(crate::error::Error::checkpoint(
            weights.source(),
            "is kept quantised and cannot be trained; dequantise it first \
             (dlm convert --model DIR --out DIR2)",
        ));
    }
    let mut tokenizer = Tokenizer::from_file(&base.join("tokenizer.json"))?;
    let mask_id = set_mask_token(mask, &mut config, &mut weights, &mut tokenizer, seed)?;
    Ok((config, weights, tokenizer, mask_id))
}
