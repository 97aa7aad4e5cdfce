//! `dlm quantize MODEL_DIR --to q8_0|q4_0|q4_1 --out DIR`: any HF-layout model directory (a
//! checkpoint dlm trained included) becomes one whose matrices are kept as ggml blocks
//! (model::quantized's format), loaded back kept quantised by every inference command.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;

use crate::model::quantized::quantize_weights;
use crate::ops::quant::QuantType;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// An HF-layout model directory (config.json, safetensors, tokenizer).
    pub model: PathBuf,
    /// Block format: q8_0, q4_0 or q4_1.
    #[arg(long)]
    pub to: QuantType,
    /// Output model directory (created if absent).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    // Read in the stored dtype (bf16 stays bf16: an 8B model is 16 GB, not 32); each matrix is
    // widened to f32 on its own as it is quantised, and its stored copy dropped.
    let dtype = super::info::stored_dtype_of(&a.model).map_or(DType::F32, |d| d.dtype());
    let m = crate::model::load_dir(&a.model, dtype, &Device::Cpu)?;
    // The built model shares every tensor with the map: dropped first, so each matrix's memory
    // goes as soon as it is quantised.
    drop(m.model);
    let (weights, n) = quantize_weights(m.weights, &m.config, a.to)?;
    // Build once, so what is written is known to load back.
    crate::model::build(&m.config, weights.var_builder(DType::F32, &Device::Cpu))
        .with_context(|| format!("{}: the quantised model does not build", a.model.display()))?;
    weights.save_dir(&a.out, &m.config, DType::F32)?;
    super::convert::copy_tokenizer_files(&a.model, &a.out)?;
    let bytes: usize = weights
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    println!(
        "wrote {} ({n} matrices as {}, {:.1} MB of weights) from {}",
        a.out.display(),
        a.to.name(),
        bytes as f64 / 1e6,
        a.model.display()
    );
    Ok(())
}
