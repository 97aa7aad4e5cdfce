//! How a diffusion run samples (Algorithm 2, reference-semantics §2): the commit rule, the token
//! choice, the accelerations, and the checks they must pass before any forward.

use super::dream::Dream;
use super::filter::TokenChoice;
use super::head_rows::HeadRows;
use super::kv_reuse::CacheMode;
use super::llada;
use super::llada::{Llada, Remasking};
use super::proposal::Proposer;
use super::schedule::{plan, Phase};
use super::unmask::Rule;
use crate::diffusion::shift::Shift;
use crate::error::{Error, OptionMessage, Result};

/// Which commit rule runs after each forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Reference `trainer.py::generate_samples`: floor(N·t/T) lowest scores stay masked.
    TopkConfidence,
    /// Reference `model.py::generate_samples`: each masked position commits with p = 1/(t+1).
    RandomKeep,
    /// A ranking rule with a linear schedule (beyond the reference).
    Ranked(Rule),
    /// LLaDA's `generate()` (`llada`).
    Llada(Llada),
    /// Dream's `diffusion_generate()` (`dream`).
    Dream(Dream),
}

impl Sampler {
    /// A family's own sampler: the masked state is `x == mask_id`, and the steps are run as
    /// asked (never clamped to the masked count).
    pub fn is_family(&self) -> bool {
        matches!(self, Sampler::Llada(_) | Sampler::Dream(_))
    }
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
    /// DiffuGPT/DiffuLLaMA checkpoint uses `Shift::Next`, LLaDA `Same`, Dream `Concat`:
    /// `family::family_sampler`).
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

    /// The schedule of a canvas whose `generated` positions are to be filled.
    pub fn phases(&self, generated: &[usize]) -> Result<Vec<Phase>> {
        match self.sampler {
            Sampler::Llada(_) => llada::phases(generated, self.steps, self.block_length),
            Sampler::Dream(_) if !generated.is_empty() => Ok(vec![Phase {
                positions: generated.to_vec(),
                steps: self.steps,
            }]),
            _ => plan(generated, self.steps, self.block_length),
        }
    }

    /// How each logits row becomes a proposal.
    pub fn proposer(&self) -> Proposer {
        let temperature = match self.choice {
            TokenChoice::Greedy => 0.0,
            TokenChoice::Sample { temperature, .. } => temperature,
        };
        match self.sampler {
            Sampler::Llada(llada) => Proposer::Llada { temperature, llada },
            Sampler::Dream(dream) => Proposer::Dream { temperature, dream },
            Sampler::Ranked(r) => Proposer::Choice(self.choice, Some(r)),
            Sampler::TopkConfidence | Sampler::RandomKeep => Proposer::Choice(self.choice, None),
        }
    }

    /// Whether no random draw decides anything: the same canvas in any batch.
    pub fn deterministic(&self) -> bool {
        let greedy = self.choice == TokenChoice::Greedy;
        greedy
            && match self.sampler {
                Sampler::RandomKeep | Sampler::Ranked(Rule::Random) => false,
                Sampler::Llada(l) => l.remasking == Remasking::LowConfidence,
                Sampler::Dream(d) => !d.draws(0.0),
                Sampler::TopkConfidence | Sampler::Ranked(_) => true,
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
        self.validate_family()?;
        // LLaDA's generate() has blocks of its own.
        let blocks = self.block_length.is_some() && !matches!(self.sampler, Sampler::Llada(_));
        if (self.threshold.is_some() || blocks) && !matches!(self.sampler, Sampler::Ranked(_)) {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .setting("threshold")
                    .text(" and ")
                    .setting("block_length")
                    .text(
                        " need a ranking sampler (confidence, margin, entropy or random), \
                         not a reference or family one (llada has blocks of its own)",
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

    /// What the families' samplers refuse: settings their references do not have.
    fn validate_family(&self) -> Result<()> {
        match self.sampler {
            Sampler::Llada(l) => {
                l.validate()?;
                if matches!(self.choice, TokenChoice::Sample { top_k, top_p, .. } if top_k.is_some() || top_p.is_some())
                {
                    return Err(Error::InvalidOption(
                        OptionMessage::default()
                            .setting("sampler")
                            .text(" llada samples by Gumbel-max over the whole vocabulary; it has no ")
                            .setting("top_p")
                            .text("/")
                            .setting("top_k"),
                    ));
                }
                if l.guidance().is_some() && self.cache != CacheMode::None {
                    return Err(Error::InvalidOption(
                        OptionMessage::default()
                            .setting("cfg_scale")
                            .text(" runs an unconditional pass that a cache does not keep; drop ")
                            .setting("cache"),
                    ));
                }
            }
            Sampler::Dream(d) => d.validate()?,
            _ => {}
        }
        Ok(())
    }
}
