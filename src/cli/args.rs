//! Option groups and loaders shared by several subcommands.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;

use crate::data::tokenizer::Tokenizer;
use crate::model::runtime::{DeviceSpec, WeightDtype};
use crate::model::{load_dir, load_gguf, LoadedModel};

/// `Default` is f32 on the CPU, as the flags' defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct RuntimeArgs {
    /// Compute dtype: f32, bf16 or f16 (weights are converted on load).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// The built-in default DLM committed with the repository (`scripts/make-builtin-model.sh`).
pub fn builtin_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/dlm-shakespeare-12m")
}

/// Whether `path` names a GGUF file (served kept quantised) rather than a model directory.
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A model directory, or a `.gguf` file loaded with its quantised matrices kept quantised.
pub fn load_model(dir: &Path, runtime: &RuntimeArgs) -> anyhow::Result<LoadedModel> {
    let device = runtime.device.open()?;
    if is_gguf_file(dir) {
        return Ok(load_gguf(dir, runtime.dtype.dtype(), &device)?);
    }
    Ok(load_dir(dir, runtime.dtype.dtype(), &device)?)
}

/// `load_model` for a command that only runs the model: bf16 weights are kept once, packed
/// for the CPU kernel, and the checkpoint's copy is dropped (`LoadedModel::release_for_inference`).
pub fn load_model_for_inference(dir: &Path, runtime: &RuntimeArgs) -> anyhow::Result<LoadedModel> {
    let mut m = load_model(dir, runtime)?;
    m.release_for_inference()?;
    Ok(m)
}

/// The tokenizer of a model directory, or the one embedded in a `.gguf` file.
pub fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    if is_gguf_file(dir) {
        return Ok(crate::data::gguf_tokenizer::import_gguf_tokenizer(dir)?);
    }
    let path: PathBuf = dir.join("tokenizer.json");
    if !path.exists() {
        bail!(
            "{} has no tokenizer.json; pass token ids instead of text",
            dir.display()
        );
    }
    Ok(Tokenizer::from_file(&path)?)
}
