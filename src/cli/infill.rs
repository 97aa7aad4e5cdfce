//! `dlm infill MODEL_DIR --prefix TEXT --suffix TEXT --length N`, or `--template "The cat
//! <|mask:8|> on the mat."` with any number of spans: the prefix and suffix are fixed (the
//! reference's `src_mask`, reference-semantics §2.3) and only the spans are sampled.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::args::{builtin_model, RuntimeArgs};
use super::sampling::{parse_ids, read_jsonl, ChoiceArgs, DiffusionArgs, Request};

#[derive(Debug, Args)]
pub struct InfillArgs {
    /// HF-layout model directory (default: the built-in dlm-shakespeare-12m).
    #[arg(default_value_os_t = builtin_model())]
    pub model: PathBuf,
    /// Text before the span (BOS is put first when the model has one).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Text after the span.
    #[arg(long)]
    pub suffix: Option<String>,
    /// The prefix as raw comma-separated token ids (no BOS added).
    #[arg(long, alias = "prompt-ids", conflicts_with = "prefix")]
    pub prefix_ids: Option<String>,
    /// The suffix as raw comma-separated token ids.
    #[arg(long, conflicts_with = "suffix")]
    pub suffix_ids: Option<String>,
    /// Text with `<|mask:N|>` spans of N tokens to fill.
    #[arg(long, conflicts_with_all = ["prefix", "suffix", "prefix_ids", "suffix_ids"])]
    pub template: Option<String>,
    /// Tokens to fill between prefix and suffix.
    #[arg(long)]
    pub length: Option<usize>,
    #[command(flatten)]
    pub choice: ChoiceArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(a: InfillArgs) -> anyhow::Result<()> {
    let flags = Request {
        prefix: a.prefix.clone(),
        suffix: a.suffix.clone(),
        prompt_ids: a.prefix_ids.as_deref().map(parse_ids).transpose()?,
        suffix_ids: a.suffix_ids.as_deref().map(parse_ids).transpose()?,
        template: a.template.clone(),
        ..Default::default()
    };
    let given = flags.prefix.is_some()
        || flags.suffix.is_some()
        || flags.prompt_ids.is_some()
        || flags.suffix_ids.is_some()
        || flags.template.is_some();
    let requests = match (&a.diffusion.input, given) {
        (Some(_), true) => {
            bail!("--input replaces --prefix/--suffix/--template; give one or the other")
        }
        (Some(path), false) => read_jsonl(path)?,
        (None, false) => bail!("give --prefix/--suffix (with --length), --template, or --input"),
        (None, true) => {
            if flags.template.is_none() && a.length.is_none() {
                bail!("--length is required with --prefix/--suffix");
            }
            vec![flags]
        }
    };
    super::sampling::run(
        &a.model,
        &a.runtime,
        &a.diffusion,
        &a.choice,
        requests,
        a.length,
        false,
    )
}
