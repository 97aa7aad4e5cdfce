//! `dlm sft`: DiffuSeq-style supervised fine-tuning (reference-semantics §1.7): [BOS] prompt
//! [SEP] response [EOS] + pads; the prompt is never masked, response, EOS and pads are trained;
//! full attention (`anneal_steps = 1`), shift on.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::adapt::load_base;
use super::train::{resume, start, TrainArgs};
use crate::data::corpus::{Corpus, CorpusOptions, Fields};
use crate::data::sft::{SftFormat, SftSource};
use crate::data::tokenizer::Tokenizer;
use crate::model::{Architecture, ModelConfig};
use crate::train::lora::LoraConfig;
use crate::train::objective::Objective;
use crate::train::trainer::RunConfig;

#[derive(Debug, Args)]
pub struct SftArgs {
    /// The (diffusion) model directory to fine-tune.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Separator between prompt and response: an id. Default: the config's `sep_token_id`,
    /// GPT-2's `======` (50155) for a GPT-2 vocabulary, else EOS.
    #[arg(long)]
    pub sep_token: Option<u32>,
    /// Mask token: an id, or `new` (default: the model's).
    #[arg(long)]
    pub mask_token: Option<String>,
    /// LoRA rank: train low-rank adapters on every block linear instead of all weights; the
    /// checkpoints hold the merged model.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator: the update is (alpha / rank)·B·A.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// BOS/SEP/EOS/pad for prompts of the §1.7 layout, from the model's config (`--sep-token` wins).
pub(crate) fn format(
    config: &ModelConfig,
    sep: Option<u32>,
    cutoff_len: usize,
) -> anyhow::Result<SftFormat> {
    let eos = config
        .eos_token_id
        .context("the model has no eos_token_id; SFT needs one")?;
    let sep = sep
        .or_else(|| {
            config
                .raw
                .get("sep_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
        })
        .or_else(|| {
            (config.arch == Architecture::Gpt2 && config.vocab_size >= 50257).then_some(50155)
        })
        .unwrap_or(eos);
    Ok(SftFormat {
        bos: config.bos_token_id.unwrap_or(eos),
        sep,
        eos,
        pad: config.pad_token_id.unwrap_or(eos),
        cutoff_len,
    })
}

fn source(paths: &[PathBuf], tokenizer: &Tokenizer, f: SftFormat) -> anyhow::Result<SftSource> {
    let corpus = Corpus::open(
        paths,
        CorpusOptions {
            fields: Fields::pair(),
            line_docs: false,
        },
    )?;
    Ok(SftSource::new(corpus, tokenizer.clone(), f)?)
}

pub fn run(a: SftArgs) -> anyhow::Result<()> {
    let t = &a.train;
    let sources = |run: &RunConfig, config: &ModelConfig, tok: &Tokenizer| {
        let f = format(config, a.sep_token, run.seq_len)?;
        // Held-out prompt/response pairs come from the shared `--val-data`.
        let val = (!run.val_data.is_empty())
            .then(|| source(&run.val_data, tok, f))
            .transpose()?;
        Ok((source(&run.data, tok, f)?, val))
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
        bail!("pass --data train.jsonl (prompt/response pairs)");
    }
    let (config, weights, tokenizer, mask_id) = load_base(base, a.mask_token.as_deref(), t.seed)?;
    let objective = Objective::Diffusion {
        mask_id,
        shift: true,
        anneal_steps: 1,
    };
    let mut run = t.run_config("sft", objective, Some(base.clone()))?;
    run.lora = a.lora_rank.map(|rank| LoraConfig {
        rank,
        alpha: a.lora_alpha,
    });
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
