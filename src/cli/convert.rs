//! `dlm convert --gguf FILE --out DIR`: a llama, llada or dream GGUF becomes an HF-layout directory
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template,
//! generation_config.json) that dlm and HF transformers both load.
//! `dlm convert --model DIR --out DIR --dtype f16`: an HF directory (a training checkpoint, say)
//! becomes a clean model directory stored in another dtype, without optimizer or trainer state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::atomic::write_atomic;
use crate::data::gguf_tokenizer::gguf_tokenizer;
use crate::model::gguf::{llama_params, llama_tensors, GgufFile, GgufLlamaParams};
use crate::model::mask_token::known_mask_id;
use crate::model::runtime::WeightDtype;
use crate::model::{llada, Architecture, ModelConfig, Weights};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A GGUF file with `general.architecture` llama, llada or dream (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub gguf: Option<PathBuf>,
    /// An HF-layout model directory (config.json, safetensors, tokenizer) to store anew.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output model directory (created if absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of model.safetensors: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
}

/// The HF config a GGUF's hyper-parameters describe: `LlamaConfig` keys (Dream's are Qwen2's,
/// the same), LLaDA's own.
fn hf_config(p: &GgufLlamaParams) -> Value {
    let (class, model_type) = match p.arch {
        Architecture::Llada => return llada_config(p),
        Architecture::Dream => ("DreamModel", "Dream"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
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
    });
    if p.arch == Architecture::Dream {
        // Qwen2 has q/k/v biases and no `attention_bias` key.
        if let Some(c) = config.as_object_mut() {
            c.remove("attention_bias");
        }
        config["mask_token_id"] = p.mask_id.into();
    }
    config
}

/// LLaDA's `ModelConfig` keys for the LLaMA block it uses.
fn llada_config(p: &GgufLlamaParams) -> Value {
    json!({
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "block_type": "llama",
        "activation_type": "silu",
        "layer_norm_type": "rms",
        "rope": true,
        "include_bias": false,
        "include_qkv_bias": false,
        "d_model": p.hidden,
        "n_heads": p.n_head,
        "n_kv_heads": p.n_kv_head,
        "n_layers": p.n_layer,
        "mlp_hidden_size": p.ffn,
        "embedding_size": p.vocab,
        "vocab_size": p.vocab,
        "max_sequence_length": p.context_length,
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_theta,
        "weight_tying": p.tied,
        "bos_token_id": p.bos_id,
        "eos_token_id": p.eos_id,
        "pad_token_id": p.pad_id,
        "mask_token_id": p.mask_id,
    })
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    Ok(write_atomic(
        path,
        serde_json::to_string_pretty(value)?.as_bytes(),
    )?)
}

/// Files of a model directory besides its config and weights.
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

fn restore_dir(dir: &Path, out: &Path, dtype: WeightDtype) -> anyhow::Result<()> {
    // Loading builds the model, so a directory whose tensors do not fit its config fails here.
    let m = crate::model::load_dir(dir, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    m.weights.save_dir(out, &m.config, dtype.dtype())?;
    for f in TOKENIZER_FILES {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), out.join(f))
                .with_context(|| format!("copying {}", dir.join(f).display()))?;
        }
    }
    println!(
        "wrote {} ({} parameters, {dtype}) from {}",
        out.display(),
        m.config.num_parameters(),
        dir.display()
    );
    Ok(())
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let dtype = a.dtype.dtype();
    let gguf = match (&a.gguf, &a.model) {
        (Some(g), _) => g,
        (None, Some(dir)) => return restore_dir(dir, &a.out, a.dtype),
        (None, None) => anyhow::bail!("pass --gguf FILE or --model DIR"),
    };
    let f = GgufFile::open(gguf)?;
    let params = llama_params(&f)?;
    // The tokenizer before the tensors: an unsupported one is refused before any dequantising.
    let tokenizer = gguf_tokenizer(&f)?;
    let tensors: BTreeMap<String, candle_core::Tensor> = llama_tensors(&f, &params)?
        .into_iter()
        .map(|(name, t)| match params.arch {
            Architecture::Llada => (llada::name_from_llama(&name), t),
            _ => (name, t),
        })
        .collect();
    let chat_template = f.str_value("tokenizer.chat_template").map(str::to_owned);
    drop(f); // unmap the file
    let mut config = ModelConfig::from_json(hf_config(&params), gguf)?;
    if config.arch != Architecture::Llama && config.mask_token_id.is_none() {
        // llama.cpp's converter does not record LLaDA's mask id.
        config.mask_token_id = known_mask_id(&config);
    }
    let n_tensors = tensors.len();
    let weights = Weights::new(tensors, gguf);
    // Build the model once so a GGUF whose tensors do not fit its own header fails here.
    crate::model::build(
        &config,
        weights.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu),
    )
    .with_context(|| format!("{}: tensors do not match the header", gguf.display()))?;
    weights.save_dir(&a.out, &config, dtype)?;
    tokenizer.save(&a.out.join("tokenizer.json"))?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    write_json(
        &a.out.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_eos_token": false,
            "bos_token": token(params.bos_id),
            "eos_token": token(params.eos_id),
            "pad_token": token(params.pad_id),
            "model_max_length": params.context_length,
            "chat_template": chat_template,
        }),
    )?;
    write_json(
        &a.out.join("generation_config.json"),
        &json!({
            "bos_token_id": params.bos_id,
            "eos_token_id": params.eos_id,
            "pad_token_id": params.pad_id,
        }),
    )?;
    println!(
        "wrote {} ({} tensors, {} parameters, {}) from {}",
        a.out.display(),
        n_tensors,
        config.num_parameters(),
        a.dtype,
        gguf.display()
    );
    Ok(())
}
