//! A run directory on disk: `run_config.json`, the `tokenizer/` the run trains with, and the
//! checkpoints (`train::checkpoint`) it resumes from.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::checkpoint;
use super::trainer::RunConfig;
use crate::atomic::write_atomic;
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, Weights};

/// Files a run keeps beside its checkpoints: the run config and the tokenizer it trains with.
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("run_config.json")
    }

    pub fn tokenizer_dir(&self) -> PathBuf {
        self.dir.join("tokenizer")
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_file(&self.tokenizer_dir().join("tokenizer.json"))
    }

    /// Whether `dir` already holds a run (a completed checkpoint).
    pub fn holds_run(dir: &Path) -> Result<bool> {
        Ok(checkpoint::latest(dir)?.is_some())
    }

    /// Creates a new run directory; refuses to overwrite one that already has checkpoints. The
    /// tokenizer and generation configs of `run.base`, where it has them, are kept with the
    /// tokenizer.
    pub fn create(dir: &Path, run: &RunConfig, tokenizer: &Tokenizer) -> Result<Self> {
        if Self::holds_run(dir)? {
            return Err(Error::Input(format!(
                "{} already holds a run; resume it, or start the new one in another directory",
                dir.display()
            )));
        }
        let files = Self::new(dir);
        let tokenizer_dir = files.tokenizer_dir();
        std::fs::create_dir_all(&tokenizer_dir)
            .map_err(|e| Error::Input(format!("creating {}: {e}", dir.display())))?;
        let config = serde_json::to_string_pretty(run)
            .map_err(|e| Error::Input(format!("encoding the run config: {e}")))?;
        write_atomic(&files.config_path(), config.as_bytes())?;
        tokenizer.save(&tokenizer_dir.join("tokenizer.json"))?;
        for f in ["tokenizer_config.json", "generation_config.json"] {
            if let Some(src) = run.base.as_ref().map(|b| b.join(f)).filter(|p| p.exists()) {
                let dst = tokenizer_dir.join(f);
                std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
            }
        }
        Ok(files)
    }

    /// The run config of the run in `dir`.
    pub fn load_config(dir: &Path) -> Result<RunConfig> {
        let path = Self::new(dir).config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Input(format!(
                "reading {} (is this a dlm run directory?): {e}",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: bad run config: {e}", path.display())))
    }
}

/// Where to resume from: the run's latest checkpoint, with its model weights and config.
pub fn resume_point(run_dir: &Path) -> Result<(PathBuf, ModelConfig, Weights)> {
    let dir = checkpoint::latest(run_dir)?.ok_or_else(|| {
        Error::Input(format!(
            "{} has no completed checkpoint to resume from",
            run_dir.display()
        ))
    })?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::load_dir(&dir, config.arch, DType::F32, &Device::Cpu)?;
    Ok((dir, config, weights))
}
