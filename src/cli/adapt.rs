//! `dlm adapt`: continual pre-training of an AR checkpoint into a diffusion LM (Algorithm 1,
//! reference-semantics §1): shift on, 1/t-weighted masked loss, attention-mask annealing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Args;

use super::train::{resume, start, TrainArgs};
use crate::data::corpus::{Corpus, CorpusOptions};
use crate::data::packing::{DocSplit, PackedSource, Part, ValSplit};
use crate::data::tokenizer::Tokenizer;
use crate::model::mask_token::{add_mask_token, reuse_mask_token};
use crate::model::{load_dir, ModelConfig, Weights};
use crate::rng::Rng;
use crate::train::objective::Objective;
use crate::train::trainer::RunConfig;

/// The token added by `--mask-token new`.
pub const NEW_MASK_TOKEN: &str = "<|mask|>";

#[derive(Debug, Args)]
pub struct AdaptArgs {
    /// The AR model directory to adapt.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The "without shift" ablation: logits at i predict token i.
    #[arg(long)]
    pub no_shift: bool,
    /// Causal → bidirectional annealing steps (paper: 10000); 0 = bidirectional from step 0.
    #[arg(long, default_value_t = 10_000)]
    pub anneal_steps: u64,
    /// Mask token: an existing id to reuse, or `new` to add a row. Default: the id the model
    /// records (or the paper's id for its family), else `new`.
    #[arg(long)]
    pub mask_token: Option<String>,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Sets the diffusion mask token on a model and its tokenizer: reuse an id or add a new row.
pub fn set_mask_token(
    spec: Option<&str>,
    config: &mut ModelConfig,
    weights: &mut Weights,
    tokenizer: &mut Tokenizer,
    seed: u64,
) -> anyhow::Result<u32> {
    match spec {
        Some("new") => {}
        Some(id) => {
            let id: u32 = id
                .parse()
                .with_context(|| format!("--mask-token takes an id or `new`, not `{id}`"))?;
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
        bail!(
            "cannot add a mask token: the tokenizer has {} tokens but the model {}; pass --mask-token ID",
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let id = add_mask_token(config, weights, &mut Rng::seed(seed ^ 0x6d61_736b))?;
    let tok_id = tokenizer.add_special_token(NEW_MASK_TOKEN)?;
    if tok_id != id {
        bail!("the tokenizer gave the new mask token id {tok_id}, the model {id}");
    }
    Ok(id)
}

/// A base model directory, ready to train as a DLM: config, weights, tokenizer and mask id.
pub fn load_base(
    base: &Path,
    mask_spec: Option<&str>,
    seed: u64,
) -> anyhow::Result<(ModelConfig, Weights, Tokenizer, u32)> {
    let loaded = load_dir(base, DType::F32, &Device::Cpu)?;
    let (mut config, mut weights) = (loaded.config, loaded.weights);
    let mut tokenizer = Tokenizer::from_file(&base.join("tokenizer.json"))?;
    let mask_id = set_mask_token(mask_spec, &mut config, &mut weights, &mut tokenizer, seed)?;
    Ok((config, weights, tokenizer, mask_id))
}

/// Train and validation sources over packed blocks of a corpus (§1.6).
pub fn packed_sources(
    run: &RunConfig,
    tokenizer: &Tokenizer,
    eos: u32,
    options: CorpusOptions,
    val_fraction: f64,
) -> anyhow::Result<(PackedSource, Option<PackedSource>)> {
    let corpus = Corpus::open(&run.data, options.clone())?;
    let packed = |corpus: Corpus, split: DocSplit, part: Part| {
        PackedSource::new(corpus, tokenizer.clone(), run.seq_len, eos, split, part)
    };
    let whole = DocSplit {
        seed: run.seed,
        val: ValSplit::None,
    };
    if !run.val_data.is_empty() {
        let val = packed(Corpus::open(&run.val_data, options)?, whole, Part::Train)?;
        return Ok((packed(corpus, whole, Part::Train)?, Some(val)));
    }
    if val_fraction <= 0.0 {
        return Ok((packed(corpus, whole, Part::Train)?, None));
    }
    let split = DocSplit {
        seed: run.seed,
        val: ValSplit::Fraction(val_fraction),
    };
    let train = packed(corpus.clone(), split, Part::Train)?;
    Ok((train, Some(packed(corpus, split, Part::Val)?)))
}

/// The document separator for packing: the model's EOS, or `<|endoftext|>`.
pub fn eos_id(config: &ModelConfig, tokenizer: &Tokenizer) -> anyhow::Result<u32> {
    config
        .eos_token_id
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
        .context("the model has no eos_token_id and the tokenizer no <|endoftext|>: cannot separate documents")
}

pub fn run(a: AdaptArgs) -> anyhow::Result<()> {
    let t = &a.train;
    let sources = |run: &RunConfig, config: &ModelConfig, tok: &Tokenizer| {
        let options = t.corpus_options(CorpusOptions::default());
        packed_sources(run, tok, eos_id(config, tok)?, options, t.val_fraction)
    };
    if let Some(run_dir) = &t.resume {
        return resume(t, run_dir, sources);
    }
    let base = a
        .base
        .as_ref()
        .context("pass --base MODEL_DIR (or --resume RUN_DIR)")?;
    let out = t.out.as_ref().context("pass --out RUN_DIR")?;
    if t.data.is_empty() {
        bail!("pass --data PATH...");
    }
    let (config, weights, tokenizer, mask_id) = load_base(base, a.mask_token.as_deref(), t.seed)?;
    let objective = Objective::Diffusion {
        mask_id,
        shift: !a.no_shift,
        anneal_steps: a.anneal_steps,
    };
    let run = t.run_config("adapt", objective, Some(base.clone()))?;
    start(
        t,
        &run,
        out,
        config,
        weights,
        &tokenizer,
        Some(base),
        sources,
    )
}
