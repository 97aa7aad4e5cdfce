//! `dlm sft`: DiffuSeq-style supervised fine-tuning (reference-semantics §1.7): [BOS] prompt
//! [SEP] response [EOS] + pads; the prompt is never masked, response, EOS and pads are trained;
//! full attention (`anneal_steps = 1`), under the loss of the model's family (the paper's,
//! shifted; LLaDA's or Dream's own, `loss_convention`).

use std::path::PathBuf;

use clap::Args;

use super::adapt::{diffusion_run, NEED_BASE};
use super::train::TrainArgs;
use crate::data::tokenizer::Tokenizer;
use crate::model::ModelConfig;
use crate::train::lora::LoraConfig;
use crate::train::sources::sft_sources;
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

pub fn run(a: SftArgs) -> anyhow::Result<()> {
    let t = &a.train;
    // Held-out prompt/response pairs come from the shared `--val-data`.
    let sources = |run: &RunConfig, config: &ModelConfig, tok: &Tokenizer| {
        sft_sources(run, config, tok, a.sep_token)
    };
    let base = (a.base.as_ref(), NEED_BASE);
    let data = "train.jsonl (prompt/response pairs)";
    t.resume_or_start(base, data, sources, |base| {
        let mask = a.mask_token.as_deref();
        let mut new = diffusion_run(t, "sft", base, mask, false, 1)?;
        new.run.lora = a.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: a.lora_alpha,
        });
        Ok(new)
    })
}
