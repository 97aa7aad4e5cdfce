//! How a diffusion run samples (Algorithm 2, reference-semantics §2): the commit rule, the token
//! choice, the accelerations, and the checks they must pass before any forward.

use super::filter::TokenChoice;
use super::head_rows::HeadRows;
use super::kv_reuse::CacheMode;
use super::unmask::Rule;
use crate::diffusion::shift::Shift;
use crate::error::{Error, OptionMessage, Result};

/// Which commit rule runs after each forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Reference `trainer.py::generate_samples`: floor(N·t/T) lowest scores stay masked.
    TopkConfidence,
    /// Reference `model.py::generate_samples`: each masked position commits with p = 1/(t+1).
    RandomKeep,
    /// A ranking rule with a linear schedule (beyond the reference).
    Ranked(Rule),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionOptions {
    /// T: forwards per canvas (clamped to the masked count; shared among blocks).
    pub steps: usize,
    /// The commit rule.
    pub sampler: Sampler,
    /// How a position's token is drawn from its logits.
    pub choice: TokenChoice,
    /// Which logits row proposes each position: the model's, as it was trained (every released
    /// DiffuGPT/DiffuLLaMA checkpoint uses `Shift::Next`).
    pub shift: Shift,
    /// Parallel decoding: also commit every masked position whose token has probability above it.
    pub threshold: Option<f32>,
    /// Semi-autoregressive blocks of this many generated positions, left to right.
    pub block_length: Option<usize>,
    /// Which rows go through the LM head.
    pub head_rows: HeadRows,
    /// Reuse keys and values across the steps of a block (`--cache`, approximate; see
    /// `kv_reuse`).
    pub cache: CacheMode,
}

impl DiffusionOptions {
    /// The evaluation scripts' sampler: top-k confidence with argmax, all rows.
    pub fn reference(steps: usize) -> Self {
        Self {
            steps,
            sampler: Sampler::TopkConfidence,
            choice: TokenChoice::Greedy,
            shift: Shift::Next,
            threshold: None,
            block_length: None,
            head_rows: HeadRows::All,
            cache: CacheMode::None,
        }
    }

    /// Checks the options on their own (no canvas needed): what sampling refuses up front.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::option("steps", "must be at least 1"));
        }
        if self.block_length == Some(0) {
            return Err(Error::option("block_length", "must be at least 1"));
        }
        if let Some(p) = self.threshold {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::option("threshold", format!("{p} is not in [0, 1)")));
            }
        }
        let extended = self.threshold.is_some() || self.block_length.is_some();
        if extended && !matches!(self.sampler, Sampler::Ranked(_)) {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .setting("threshold")
                    .text(" and ")
                    .setting("block_length")
                    .text(
                        " need a ranking sampler (confidence, margin, entropy or random), \
                         not a reference one",
                    ),
            ));
        }
        if self.head_rows == HeadRows::All && self.cache != CacheMode::None {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .setting("exact")
                    .text(" runs the reference's full work; it excludes ")
                    .setting("cache"),
            ));
        }
        Ok(())
    }
}
