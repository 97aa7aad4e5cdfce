//! `dlm pretrain`: training from random initialisation with the AR or the diffusion objective,
//! so that adaptation can be compared with a DLM trained from scratch.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::named::named;
use super::train::TrainArgs;
use crate::data::tokenizer::Tokenizer;
use crate::model::preset::Size;
use crate::model::{Architecture, ModelConfig};
use crate::rng::Rng;
use crate::train::base::new_mask_id;
use crate::train::init::init_weights;
use crate::train::objective::{Objective, ObjectiveKind};
use crate::train::run::NewRun;

#[derive(Debug, Args)]
pub struct PretrainArgs {
    #[arg(long, value_parser = named::<Architecture>(), default_value_t = Architecture::Gpt2)]
    pub arch: Architecture,
    /// A size (tiny, mini, small) or an HF config.json (its vocab_size is replaced).
    #[arg(long, default_value = "mini")]
    pub config: String,
    /// tokenizer.json to train with.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_parser = named::<ObjectiveKind>(), default_value_t = ObjectiveKind::Ar)]
    pub objective: ObjectiveKind,
    /// Diffusion without the shift.
    #[arg(long)]
    pub no_shift: bool,
    /// Diffusion annealing steps (0: bidirectional from the start).
    #[arg(long, default_value_t = 0)]
    pub anneal_steps: u64,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// The HF config of `--config`: a named size of `--arch`, or a config.json with the tokenizer's
/// vocabulary.
fn hf_config(
    a: &PretrainArgs,
    vocab: usize,
    context: usize,
    eos: Option<u32>,
) -> anyhow::Result<serde_json::Value> {
    let spec = &a.config;
    if let Ok(size) = spec.parse::<Size>() {
        return Ok(size.hf_config(a.arch, vocab, context, eos));
    }
    config_file(spec, vocab)
}

/// The config.json at `spec` (a `--config` that names no size), with `vocab` as its vocabulary.
pub(crate) fn config_file(spec: &str, vocab: usize) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(spec).with_context(|| {
        format!(
            "--config `{spec}` is neither a size (tiny, mini, small) nor a readable config.json"
        )
    })?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{spec}: not valid JSON"))?;
    value["vocab_size"] = vocab.into();
    Ok(value)
}

fn new_run(a: &PretrainArgs, tok_path: &Path) -> anyhow::Result<NewRun> {
    let t = &a.train;
    let mut tokenizer = Tokenizer::from_file(tok_path)?;
    let eos = tokenizer.token_to_id("<|endoftext|>");
    let objective = match a.objective {
        ObjectiveKind::Ar => Objective::Ar,
        ObjectiveKind::Diffusion => {
            let mask_id = new_mask_id(&mut tokenizer)?;
            Objective::diffusion(a.arch, mask_id, a.no_shift, a.anneal_steps)?
        }
    };
    let family_context = match a.arch {
        Architecture::Gpt2 => 1024,
        Architecture::Llama | Architecture::Llada | Architecture::Dream => 2048,
    };
    let context = t.seq_len.max(family_context);
    let value = hf_config(a, tokenizer.vocab_size(), context, eos)?;
    let mut config = ModelConfig::from_json(value, Path::new(&a.config))?;
    if let Objective::Diffusion { mask_id, .. } = objective {
        config.mask_token_id = Some(mask_id);
    }
    let weights = init_weights(&config, &mut Rng::seed(t.seed))?;
    let run = t.run_config("pretrain", objective, None)?;
    Ok(NewRun {
        run,
        config,
        weights,
        tokenizer,
    })
}

pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    let t = &a.train;
    let tokenizer = (
        a.tokenizer.as_ref(),
        "pass --tokenizer tokenizer.json (train one with `dlm tokenizer train`)",
    );
    t.resume_or_start(tokenizer, "PATH...", t.packed_sources(), |tok| {
        new_run(&a, tok)
    })
}
