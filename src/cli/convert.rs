//! `dlm convert --gguf FILE --out DIR`: a llama, llada or dream GGUF becomes an HF-layout directory
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template,
//! generation_config.json) that dlm and HF transformers both load.
//! With `--keep-quant` the quantised matrices stay as their blocks (model::quantized's format).
//! `dlm convert --model DIR --out DIR --dtype f16`: an HF directory (a training checkpoint, say)
//! becomes a clean model directory stored in another dtype, without optimizer or trainer state;
//! kept-quantised matrices are dequantised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::atomic::write_atomic;
use crate::data::gguf_tokenizer::gguf_tokenizer;
use crate::model::gguf::{llama_params, llama_tensors, llama_tensors_kept, GgufFile};
use crate::model::mask_token::known_mask_id;
use crate::model::quantized::{dequantize_weights, is_quantized, quantization_config};
use crate::model::runtime::WeightDtype;
use crate::model::{Architecture, ModelConfig, Weights};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A GGUF file with `general.architecture` llama, llada or dream (F32, F16, BF16, Q8_0,
    /// Q4_0, Q4_1, Q4_K tensors).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub gguf: Option<PathBuf>,
    /// An HF-layout model directory (config.json, safetensors, tokenizer) to store anew.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output model directory (created if absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of model.safetensors: f32, bf16 or f16 (of the float tensors, with
    /// --keep-quant).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Keep the GGUF's Q8_0/Q4_0/Q4_1/Q4_K matrices as their blocks (U8 tensors
    /// `NAME_<type>`, loaded back kept quantised) instead of dequantising them.
    #[arg(long, requires = "gguf")]
    pub keep_quant: bool,
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

/// Copies the tokenizer files `dir` has into `out`.
pub(super) fn copy_tokenizer_files(dir: &Path, out: &Path) -> anyhow::Result<()> {
    for f in TOKENIZER_FILES {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), out.join(f))
                .with_context(|| format!("copying {}", dir.join(f).display()))?;
        }
    }
    Ok(())
}

fn restore_dir(dir: &Path, out: &Path, dtype: WeightDtype) -> anyhow::Result<()> {
    // Loading builds the model, so a directory whose tensors do not fit its config fails here.
    let m = crate::model::load_dir(dir, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    // Kept-quantised matrices come back as floats: the output is a plain model directory.
    let weights = match is_quantized(&m.weights) {
        true => dequantize_weights(&m.weights, &m.config)?,
        false => m.weights,
    };
    weights.save_dir(out, &m.config, dtype.dtype())?;
    copy_tokenizer_files(dir, out)?;
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
    let tensors = match a.keep_quant {
        true => llama_tensors_kept(&f, &params)?,
        false => llama_tensors(&f, &params)?,
    };
    let tensors: BTreeMap<String, candle_core::Tensor> = tensors.into_iter().collect();
    let chat_template = f.str_value("tokenizer.chat_template").map(str::to_owned);
    drop(f); // unmap the file
    let mut config = ModelConfig::from_json(params.hf_config(), gguf)?;
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
    let kept = match quantization_config(&weights) {
        Some(q) => format!(", matrices kept as {} blocks", q["types"]),
        None => String::new(),
    };
    println!(
        "wrote {} ({} tensors, {} parameters, {}{kept}) from {}",
        a.out.display(),
        n_tensors,
        config.num_parameters(),
        a.dtype,
        gguf.display()
    );
    Ok(())
}
