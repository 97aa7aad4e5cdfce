//! `dlm adapt`: continual pre-training of an AR checkpoint into a diffusion LM (Algorithm 1,
//! reference-semantics §1): shift on, 1/t-weighted masked loss, attention-mask annealing.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;

use super::train::TrainArgs;
use crate::train::base::{load_base, MaskChoice};
use crate::train::objective::Objective;
use crate::train::run::NewRun;

/// What `adapt` and `sft` say when a new run has no model to start from.
pub const NEED_BASE: &str = "pass --base MODEL_DIR (or --resume RUN_DIR)";

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

/// `--mask-token`: an id or `new`.
fn mask_choice(spec: Option<&str>) -> anyhow::Result<Option<MaskChoice>> {
    spec.map(|s| {
        s.parse()
            .map_err(|_| anyhow!("--mask-token takes an id or `new`, not `{s}`"))
    })
    .transpose()
}

/// A new run of `command` that trains base model `base` as a DLM, its mask token chosen by
/// `--mask-token`: the start of `adapt` and `sft`.
pub fn diffusion_run(
    t: &TrainArgs,
    command: &str,
    base: &Path,
    mask_token: Option<&str>,
    no_shift: bool,
    anneal_steps: u64,
) -> anyhow::Result<NewRun> {
    let (config, weights, tokenizer, mask_id) = load_base(base, mask_choice(mask_token)?, t.seed)?;
    let objective = Objective::diffusion(config.arch, mask_id, no_shift, anneal_steps)?;
    let run = t.run_config(command, objective, Some(base.to_path_buf()))?;
    Ok(NewRun {
        run,
        config,
        weights,
        tokenizer,
    })
}

pub fn run(a: AdaptArgs) -> anyhow::Result<()> {
    let t = &a.train;
    let base = (a.base.as_ref(), NEED_BASE);
    t.resume_or_start(base, "PATH...", t.packed_sources(), |base| {
        let mask = a.mask_token.as_deref();
        diffusion_run(t, "adapt", base, mask, a.no_shift, a.anneal_steps)
    })
}
