//! `dlm convert --gguf FILE --out DIR`: a llama-architecture GGUF becomes an HF-layout directory
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template,
//! generation_config.json) that dlm and HF transformers both load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use super::args::parse_dtype;
use crate::atomic::write_atomic;
use crate::model::gguf::{import_llama_gguf, GgufLlamaParams};
use crate::model::{ModelConfig, Weights};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A GGUF file with `general.architecture = llama` (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors).
    #[arg(long)]
    pub gguf: PathBuf,
    /// Output model directory (created if absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of model.safetensors: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// The HF `LlamaConfig` a GGUF's hyper-parameters describe.
fn hf_config(p: &GgufLlamaParams) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": p.vocab,
        "hidden_size": p.hidden,
        "intermediate_size": p.ffn,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_kv_head,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": p.context_length,
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": p.tied,
        "bos_token_id": p.bos_id,
        "eos_token_id": p.eos_id,
        "pad_token_id": p.pad_id,
        "initializer_range": 0.02,
        "use_cache": true,
    })
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    Ok(write_atomic(
        path,
        serde_json::to_string_pretty(value)?.as_bytes(),
    )?)
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let dtype = parse_dtype(&a.dtype)?;
    let imp = import_llama_gguf(&a.gguf)?;
    let config = ModelConfig::from_json(hf_config(&imp.params), &a.gguf)?;
    let tensors: BTreeMap<String, candle_core::Tensor> = imp.tensors.into_iter().collect();
    let n_tensors = tensors.len();
    let weights = Weights::new(tensors, &a.gguf);
    // Build the model once so a GGUF whose tensors do not fit its own header fails here.
    crate::model::build(
        &config,
        weights.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu),
    )
    .with_context(|| format!("{}: tensors do not match the header", a.gguf.display()))?;
    weights.save_dir(&a.out, &config, dtype)?;
    imp.tokenizer.save(&a.out.join("tokenizer.json"))?;
    let token = |id: Option<u32>| id.and_then(|i| imp.tokenizer.id_to_token(i));
    write_json(
        &a.out.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_eos_token": false,
            "bos_token": token(imp.params.bos_id),
            "eos_token": token(imp.params.eos_id),
            "pad_token": token(imp.params.pad_id),
            "model_max_length": imp.params.context_length,
            "chat_template": imp.chat_template,
        }),
    )?;
    write_json(
        &a.out.join("generation_config.json"),
        &json!({
            "bos_token_id": imp.params.bos_id,
            "eos_token_id": imp.params.eos_id,
            "pad_token_id": imp.params.pad_id,
        }),
    )?;
    println!(
        "wrote {} ({} tensors, {} parameters, {}) from {}",
        a.out.display(),
        n_tensors,
        config.num_parameters(),
        a.dtype,
        a.gguf.display()
    );
    Ok(())
}
