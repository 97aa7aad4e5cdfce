//! `dlm info MODEL_DIR`: what a model directory holds.

use crate::sample::generation_config::GenerationDefaults;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::args::{load_model, RuntimeArgs};
use crate::data::tokenizer::Tokenizer;
use crate::diffusion::shift::Shift;
use crate::model::runtime::WeightDtype;
use crate::model::{Architecture, ModelConfig};
use crate::named::Named;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// HF-layout model directory.
    #[arg(required_unless_present = "system")]
    pub model: Option<PathBuf>,
    /// Print the CPU, its features and which path each kernel runs (no model needed).
    #[arg(long)]
    pub system: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let Some(model) = a.model.filter(|_| !a.system) else {
        return super::info_system::run(a.json);
    };
    // Loaded (so a broken checkpoint is reported) in its stored dtype: a bf16 8B model is
    // 16 GB as stored, 32 GB widened to f32.
    let runtime = RuntimeArgs {
        dtype: stored_dtype_of(&model).unwrap_or_default(),
        ..RuntimeArgs::default()
    };
    let m = load_model(&model, &runtime)?;
    let c = &m.config;
    let stored_dtype = c
        .raw
        .get("torch_dtype")
        .or(c.raw.get("dtype"))
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    let tok = Tokenizer::from_model_dir(&model)?;
    let name = |id: Option<u32>| id.and_then(|i| tok.as_ref().and_then(|t| t.id_to_token(i)));
    let mut info = json!({
        "architecture": c.arch.to_string(),
        "parameters": c.num_parameters(),
        "dtype": stored_dtype,
        "vocab_size": c.vocab_size,
        "tokenizer_vocab_size": tok.as_ref().map(|t| t.vocab_size()),
        "hidden_size": c.hidden_size,
        "layers": c.num_layers,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "context_length": c.max_position_embeddings,
        "rope_theta": (c.arch != crate::model::Architecture::Gpt2).then_some(c.rope_theta),
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id, "bos_token": name(c.bos_token_id),
        "eos_token_id": c.eos_token_id, "eos_token": name(c.eos_token_id),
        "pad_token_id": c.pad_token_id, "pad_token": name(c.pad_token_id),
        "mask_token_id": c.mask_token_id, "mask_token": name(c.mask_token_id),
    });
    if let (Some(conventions), serde_json::Value::Object(map)) = (family_conventions(c), &mut info)
    {
        map.extend(conventions);
    }
    // What generate/infill/serve use for the settings a user leaves out.
    let defaults = GenerationDefaults::load(&model)?;
    if defaults != GenerationDefaults::default() {
        info["generation_defaults"] = serde_json::to_value(&defaults)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else if let serde_json::Value::Object(map) = info {
        println!("{}", model.display());
        for (k, v) in map {
            if !v.is_null() {
                println!("  {k:<22} {v}");
            }
        }
    }
    Ok(())
}

/// The dtype a model directory's config.json says its weights are stored in (None for a GGUF
/// file or a config that names none).
pub fn stored_dtype_of(model: &std::path::Path) -> Option<WeightDtype> {
    ModelConfig::from_file(&model.join("config.json"))
        .ok()?
        .stored_dtype()
}

/// What a diffusion family fixes, for the families that fix it (LLaDA, Dream): GPT-2 and LLaMA
/// checkpoints leave attention, shift and sampler to the run.
fn family_conventions(c: &ModelConfig) -> Option<serde_json::Map<String, serde_json::Value>> {
    let shift = Shift::for_arch(c.arch)?;
    let reading = match (c.arch, shift) {
        (Architecture::Dream, _) => {
            "logits at i score token i+1, read as cat(logits[:, :1], logits[:, :-1])"
        }
        (_, Shift::Same) => "none: logits at i score token i",
        (_, Shift::Next | Shift::Concat) => "logits at i score token i+1",
    };
    let mask_from = match (c.mask_token_id, c.raw.contains_key("mask_token_id")) {
        (Some(_), true) => "config.json `mask_token_id`",
        (Some(_), false) => "the id known for this family and vocabulary (not in config.json)",
        (None, _) => "none (pass --mask-id)",
    };
    let json = json!({
        "family": c.arch.help(),
        "attention": "bidirectional",
        "shift": reading,
        "mask_token_from": mask_from,
        // The family's own sampler, named as the family.
        "default_sampler": c.arch.name(),
    });
    json.as_object().cloned()
}
