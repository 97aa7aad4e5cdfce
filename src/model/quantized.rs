//! Kept-quantised weights in a checkpoint. A quantised matrix `X.weight` is stored as a U8
//! tensor `X.weight_<type>` (`…q_proj.weight_q4_1`) of shape `[out, row_bytes]`: its ggml blocks,
//! row by row, always `[out, in]` (GPT-2's `[in, out]` Conv1D weights are transposed before they
//! are quantised). The name says the type, so a safetensors file of such tensors describes
//! itself; `config.json` adds a `quantization_config` for other readers. Everything else (norms,
//! biases, position tables) stays float.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{Architecture, ModelConfig, Weights};
use crate::error::{Error, Result};
use crate::ops::quant::{QuantMatrix, QuantType};

/// The stored name of `name` (an HF `….weight`) kept as `ty` blocks.
pub fn quantized_name(name: &str, ty: QuantType) -> String {
    format!("{name}_{}", ty.name())
}

/// (HF name, type) of a stored quantised tensor name; None for a float tensor.
pub fn parse_quantized_name(stored: &str) -> Option<(&str, QuantType)> {
    QuantType::ALL.into_iter().find_map(|ty| {
        let base = stored.strip_suffix(&format!("_{}", ty.name()))?;
        base.ends_with(".weight").then_some((base, ty))
    })
}

/// The `[d_out, d_in]` weight under `vb` (`vb`'s `weight`) when it is stored quantised.
pub fn find_quantized(
    vb: &VarBuilder,
    d_in: usize,
    d_out: usize,
) -> candle_core::Result<Option<QuantMatrix>> {
    for ty in QuantType::ALL {
        let name = quantized_name("weight", ty);
        if !vb.contains_tensor(&name) {
            continue;
        }
        if !d_in.is_multiple_of(ty.block_elems()) {
            candle_core::bail!(
                "{}.{name}: {d_in} inputs are not a multiple of the {} block",
                vb.prefix(),
                ty.name()
            );
        }
        let shape = (d_out, ty.row_bytes(d_in));
        let blocks = vb.get_with_hints_dtype(shape, &name, Default::default(), DType::U8)?;
        return QuantMatrix::from_blocks(ty, blocks, d_out, d_in).map(Some);
    }
    Ok(None)
}

/// Whether GPT-2 stores `name` as `[in, out]` (its Conv1D weights).
fn stored_in_out(arch: Architecture, name: &str) -> bool {
    arch == Architecture::Gpt2
        && [".c_attn.", ".c_proj.", ".c_fc."]
            .iter()
            .any(|s| name.contains(s))
}

/// Which tensors `dlm quantize` keeps quantised: every matrix named `….weight` whose inputs fill
/// whole blocks, except position tables (looked up, never multiplied).
fn quantizable(name: &str, t: &Tensor, ty: QuantType, arch: Architecture) -> bool {
    let Ok((a, b)) = t.dims2() else { return false };
    let d_in = if stored_in_out(arch, name) { a } else { b };
    name.ends_with(".weight")
        && !name.ends_with("wpe.weight")
        && d_in.is_multiple_of(ty.block_elems())
}

/// Whether any tensor of `w` is stored quantised.
pub fn is_quantized(w: &Weights) -> bool {
    w.iter().any(|(n, _)| parse_quantized_name(n).is_some())
}

/// `w` with every matrix [`quantizable`] replaced by its `ty` blocks (tied heads are stored once,
/// as the embedding). Returns the weights and how many matrices were quantised.
pub fn quantize_weights(
    w: Weights,
    config: &ModelConfig,
    ty: QuantType,
) -> Result<(Weights, usize)> {
    if ty == QuantType::Q4K {
        return Err(Error::Input(
            "dlm quantize writes q8_0, q4_0 or q4_1, not q4_k".into(),
        ));
    }
    if is_quantized(&w) {
        return Err(Error::checkpoint(w.source(), "is already quantised"));
    }
    let mut out = Weights::new(Default::default(), w.source());
    let mut n = 0;
    // Consumed tensor by tensor: each stored matrix is freed once its blocks exist.
    for (name, t) in w.into_tensors() {
        if !quantizable(&name, &t, ty, config.arch) {
            out.insert(name, t);
            continue;
        }
        let t = t.to_dtype(DType::F32)?;
        let t = if stored_in_out(config.arch, &name) {
            t.t()?
        } else {
            t
        };
        let (rows, cols) = t.dims2()?;
        let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let q = QuantMatrix::quantize(ty, &data, rows, cols)?;
        out.insert(quantized_name(&name, ty), q.blocks().clone());
        n += 1;
    }
    Ok((out, n))
}

/// `w` with every quantised tensor dequantised back to an f32 `….weight` in its HF layout.
pub fn dequantize_weights(w: &Weights, config: &ModelConfig) -> Result<Weights> {
    let mut out = Weights::new(Default::default(), w.source());
    for (stored, t) in w.iter() {
        let Some((name, ty)) = parse_quantized_name(stored) else {
            out.insert(stored.clone(), t.clone());
            continue;
        };
        let (rows, row_bytes) = t.dims2()?;
        let cols = row_bytes / ty.block_bytes() * ty.block_elems();
        let q = QuantMatrix::from_blocks(ty, t.clone(), rows, cols)
            .map_err(|e| Error::checkpoint(w.source(), format!("tensor `{stored}`: {e}")))?;
        let f = Tensor::from_vec(q.dequantize()?, (rows, cols), &Device::Cpu)?;
        let f = if stored_in_out(config.arch, name) {
            f.t()?.contiguous()?
        } else {
            f
        };
        out.insert(name, f);
    }
    Ok(out)
}

/// The `quantization_config` entry of `config.json` describing kept-quantised weights.
pub fn quantization_config(w: &Weights) -> Option<serde_json::Value> {
    let mut types: Vec<&str> = w
        .iter()
        .filter_map(|(n, _)| parse_quantized_name(n).map(|(_, ty)| ty.name()))
        .collect();
    types.sort();
    types.dedup();
    (!types.is_empty()).then(|| {
        serde_json::json!({
            "quant_method": "dlm_ggml_blocks",
            "types": types,
            "layout": "U8 tensor NAME_<type> [out, row_bytes] of ggml blocks per matrix NAME",
        })
    })
}
