//! A model directory's sampling defaults, from its `generation_config.json`: what `dlm generate`,
//! `dlm infill` and `dlm serve` use for each setting the user leaves out, so a model is shown at
//! its best without flags. HF's keys are read where they exist (`temperature`, `top_p`, `top_k`,
//! `do_sample`, `max_new_tokens`, and Dream's `steps`); `sampler` and `block_length` are dlm's.
//!
//! The sampler and its token-choice settings go together: naming another sampler than the
//! defaults' (`--sampler topk-confidence`, the reference) starts from dlm's own settings
//! (argmax) instead of mixing, say, the defaults' `top_p` into a sampler that refuses it. The
//! number of steps and generated positions apply to every sampler.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::request::SamplerName;
use crate::error::{Error, Result};

pub const FILE: &str = "generation_config.json";

/// A model's sampling defaults. `temperature` and `top_p` are f64 so that `dlm info` prints them
/// as written (0.8, not 0.800000011920929); the samplers take f32.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct GenerationDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_length: Option<usize>,
    /// Generated positions after a prompt (`--length`, a completion's `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// HF: false means greedy whatever `temperature` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
}

impl GenerationDefaults {
    /// The defaults in `dir`; none when the file is absent, or when the model is a single file
    /// (a `.gguf`, which carries no such file). A file that is not JSON, or a key of the wrong
    /// type, is an error naming the file and the key.
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.is_file() {
            return Ok(Self::default());
        }
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::Input(format!("{}: {e}", path.display()))),
        };
        let mut de = serde_json::Deserializer::from_str(&text);
        let d: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            Error::Input(format!("{}: `{}`: {}", path.display(), e.path(), e.inner()))
        })?;
        if d.steps == Some(0) {
            return Err(Error::Input(format!(
                "{}: `steps` must be at least 1",
                path.display()
            )));
        }
        Ok(d)
    }

    /// The defaults that apply when the user names `sampler` (None: names none). Another
    /// sampler than the defaults' keeps only `steps` and `max_new_tokens`.
    pub fn for_sampler(&self, sampler: Option<SamplerName>) -> Self {
        let own = sampler.is_none() || sampler == self.sampler;
        if own {
            let mut d = self.clone();
            if d.do_sample == Some(false) {
                d.temperature = Some(0.0);
            }
            return d;
        }
        Self {
            steps: self.steps,
            max_new_tokens: self.max_new_tokens,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(FILE), text).unwrap();
    }

    #[test]
    fn hf_keys_are_read_and_a_missing_file_is_no_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            GenerationDefaults::load(dir.path()).unwrap(),
            GenerationDefaults::default()
        );
        write(
            dir.path(),
            r#"{"bos_token_id": 0, "sampler": "random-keep", "temperature": 0.8, "top_p": 0.9,
                "steps": 64, "max_new_tokens": 96, "transformers_version": "4.46"}"#,
        );
        let d = GenerationDefaults::load(dir.path()).unwrap();
        assert_eq!(d.sampler, Some(SamplerName::RandomKeep));
        assert_eq!(
            (d.temperature, d.top_p, d.steps),
            (Some(0.8), Some(0.9), Some(64))
        );
        assert_eq!(d.max_new_tokens, Some(96));
    }

    #[test]
    fn another_sampler_keeps_only_steps_and_length() {
        let d = GenerationDefaults {
            sampler: Some(SamplerName::RandomKeep),
            temperature: Some(0.8),
            top_p: Some(0.9),
            steps: Some(32),
            max_new_tokens: Some(80),
            block_length: Some(16),
            ..Default::default()
        };
        assert_eq!(d.for_sampler(None), d);
        assert_eq!(d.for_sampler(Some(SamplerName::RandomKeep)), d);
        let reference = d.for_sampler(Some(SamplerName::TopkConfidence));
        assert_eq!(
            reference,
            GenerationDefaults {
                steps: Some(32),
                max_new_tokens: Some(80),
                ..Default::default()
            }
        );
        let greedy = GenerationDefaults {
            do_sample: Some(false),
            temperature: Some(0.6),
            ..Default::default()
        };
        assert_eq!(greedy.for_sampler(None).temperature, Some(0.0));
    }

    #[test]
    fn bad_files_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), r#"{"temperature": "hot"}"#);
        let e = GenerationDefaults::load(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(FILE) && e.contains("`temperature`"), "{e}");
        write(dir.path(), r#"{"sampler": "best"}"#);
        let e = GenerationDefaults::load(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sampler`"), "{e}");
        write(dir.path(), r#"{"steps": 0}"#);
        let e = GenerationDefaults::load(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`steps`"), "{e}");
        write(dir.path(), "{");
        assert!(GenerationDefaults::load(dir.path()).is_err());
    }
}
