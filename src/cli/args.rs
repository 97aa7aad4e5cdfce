//! Option groups and loaders shared by several subcommands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Args;

use crate::data::tokenizer::Tokenizer;
use crate::model::{load_dir, LoadedModel};

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Compute dtype: f32, bf16 or f16 (weights are converted on load).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The built-in default DLM committed with the repository (`scripts/make-builtin-model.sh`).
pub fn builtin_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/dlm-shakespeare-10m")
}

pub fn parse_dtype(s: &str) -> anyhow::Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("unknown dtype `{other}` (expected f32, bf16 or f16)"),
    })
}

pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad device `{s}` (expected cpu, cuda or cuda:N)"))?,
        None => bail!("unknown device `{s}` (expected cpu, cuda or cuda:N)"),
    };
    Device::new_cuda(ordinal)
        .with_context(|| format!("cannot open {s} (was dlm built with --features cuda?)"))
}

pub fn load_model(dir: &Path, runtime: &RuntimeArgs) -> anyhow::Result<LoadedModel> {
    let dtype = parse_dtype(&runtime.dtype)?;
    let device = parse_device(&runtime.device)?;
    Ok(load_dir(dir, dtype, &device)?)
}

pub fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let path: PathBuf = dir.join("tokenizer.json");
    if !path.exists() {
        bail!(
            "{} has no tokenizer.json; pass token ids instead of text",
            dir.display()
        );
    }
    Ok(Tokenizer::from_file(&path)?)
}
