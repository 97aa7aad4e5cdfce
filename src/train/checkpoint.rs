//! Training checkpoints: a directory per saved step holding the model in HF layout (loadable by
//! every dlm command and by HF transformers), the AdamW moments, and the trainer state (step,
//! RNG, data cursor). Each directory is assembled under a temporary name and renamed into place,
//! and `latest` is rewritten atomically after it, so a crash leaves the last good one intact.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::data::loader::LoaderState;
use crate::error::{Error, Result};
use crate::model::weights::{read_safetensors, write_safetensors};
use crate::model::{ModelConfig, Weights};
use crate::rng::Rng;
use crate::train::params::TrainableModel;

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
/// LoRA runs: the factors of each checkpoint, and the frozen base of the run (written once).
const ADAPTER_FILE: &str = "adapter.safetensors";
const LORA_BASE_FILE: &str = "lora-base.safetensors";
/// Files copied from the base model so that a checkpoint is a complete model directory.
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub rng: Rng,
    pub loader: LoaderState,
    pub tokens_seen: u64,
    pub skipped_nonfinite: u64,
}

fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Saves step `state.step` with the optimizer's moments (`AdamW::state_tensors`) and returns
/// its directory.
pub fn save(
    run_dir: &Path,
    model: &TrainableModel,
    config: &ModelConfig,
    moments: &[(String, Tensor)],
    state: &TrainerState,
    tokenizer_dir: Option<&Path>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // f32 always: an exact resume needs the exact parameters.
    model.weights(run_dir)?.save_dir(&tmp, config, DType::F32)?;
    let factors = model.factors();
    if !factors.is_empty() {
        write_safetensors(&tmp.join(ADAPTER_FILE), &factors)?;
    }
    write_safetensors(&tmp.join(OPTIMIZER_FILE), moments)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Input(e.to_string()))?;
    write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
    if let Some(src) = tokenizer_dir {
        for f in TOKENIZER_FILES {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), tmp.join(f)).map_err(|e| Error::io(src.join(f), e))?;
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    Ok(dir)
}

/// The directory named by `latest`, if a checkpoint was ever completed.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = checkpoints_dir(run_dir).join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let dir = checkpoints_dir(run_dir).join(name.trim());
    if !dir.join(STATE_FILE).exists() {
        return Err(Error::checkpoint(
            &dir,
            "`latest` names an incomplete checkpoint",
        ));
    }
    Ok(Some(dir))
}

/// Reads the trainer state and optimizer moments of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<(TrainerState, Vec<(String, Tensor)>)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("bad trainer state: {e}")))?;
    let moments = read_safetensors(&dir.join(OPTIMIZER_FILE), DType::F32, &Device::Cpu, |_| {
        true
    })?;
    Ok((state, moments))
}

/// Deletes all but the newest `keep` checkpoints (0 keeps everything).
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let root = checkpoints_dir(run_dir);
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// Keeps the frozen base of a LoRA run in the run directory.
pub fn save_lora_base(run_dir: &Path, weights: &Weights) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    write_safetensors(&run_dir.join(LORA_BASE_FILE), &tensors)
}

fn read_weights(path: &Path) -> Result<Weights> {
    let tensors = read_safetensors(path, DType::F32, &Device::Cpu, |_| true)?;
    Ok(Weights::new(tensors.into_iter().collect(), path))
}

/// The frozen base of a LoRA run.
pub fn load_lora_base(run_dir: &Path) -> Result<Weights> {
    read_weights(&run_dir.join(LORA_BASE_FILE))
}

/// The LoRA factors saved in a checkpoint.
pub fn load_factors(checkpoint: &Path) -> Result<Weights> {
    read_weights(&checkpoint.join(ADAPTER_FILE))
}
