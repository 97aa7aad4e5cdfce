//! Import of llama-architecture GGUF files (e.g. SmolLM2) into HF `LlamaForCausalLM` tensors:
//! hyper-parameters from `llama.*` metadata, every tensor dequantised to f32 in HF names and
//! `[out, in]` layout with llama.cpp's Q/K row permutation undone. llama.cpp's `llada` and
//! `dream` files use the same tensor names under their own metadata prefix (Dream adds q/k/v
//! biases, and its converter leaves Q/K unpermuted); Dream's import to the LLaMA (Qwen2) names,
//! LLaDA's to its own. The embedded tokenizer is rebuilt from the same metadata by `data::gguf_tokenizer`. Anything dlm cannot serve faithfully
//! is refused by name rather than approximated.

mod dequant;
mod hf_config;
mod metadata;
mod reader;
mod value;

use std::path::Path;

use candle_core::{Device, Tensor};

use super::quantized::{parse_quantized_name, quantized_name};
use crate::error::Result;
use crate::model::{llada, Architecture};
use crate::ops::quant::QuantType;
pub use reader::GgufFile;
pub use value::{GgufValue, TensorInfo};

/// Hyper-parameters of a llama-architecture model, as read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufLlamaParams {
    /// `general.architecture`: llama, llada or dream.
    pub arch: Architecture,
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub context_length: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.mask_token_id` (llama.cpp's converter writes Dream's).
    pub mask_id: Option<u32>,
    /// No `output.weight`: the LM head is the token embedding.
    pub tied: bool,
    pub name: Option<String>,
}

/// Everything a GGUF file provides for building a model (the tokenizer is
/// `data::gguf_tokenizer`'s).
#[derive(Debug)]
pub struct GgufImport {
    pub params: GgufLlamaParams,
    /// HF names (`model.layers.0.self_attn.q_proj.weight`, ...), f32 on the CPU, `[out, in]`.
    pub tensors: Vec<(String, Tensor)>,
    pub chat_template: Option<String>,
}

/// Reads a llama-architecture GGUF file; see the module docs.
pub fn import_llama_gguf(path: &Path) -> Result<GgufImport> {
    let f = GgufFile::open(path)?;
    let params = llama_params(&f)?;
    let tensors = llama_tensors(&f, &params)?;
    Ok(GgufImport {
        params,
        tensors,
        chat_template: f.str_value("tokenizer.chat_template").map(str::to_owned),
    })
}

/// The hyper-parameters of a llama-architecture file, checked (cheap: no tensor is read).
pub fn llama_params(f: &GgufFile) -> Result<GgufLlamaParams> {
    let arch = match f.required_str("general.architecture")? {
        "llama" => Architecture::Llama,
        "llada" => Architecture::Llada,
        "dream" => Architecture::Dream,
        other => {
            return Err(f.err(format!(
                "architecture {other:?} is not supported (only \"llama\", \"llada\", \"dream\")"
            )))
        }
    };
    let (vocab, special) = vocab_and_special_ids(f)?;
    read_params(f, arch, vocab, special)
}

/// Every tensor, dequantised, in HF names, shapes and row order; all that `p` implies must be
/// there.
pub fn llama_tensors(f: &GgufFile, p: &GgufLlamaParams) -> Result<Vec<(String, Tensor)>> {
    read_tensors(f, p, false)
}

/// As [`llama_tensors`], but every Q8_0/Q4_0/Q4_1/Q4_K matrix stays as its blocks, a U8 tensor
/// under its `model::quantized` name; other types are dequantised as there.
pub fn llama_tensors_kept(f: &GgufFile, p: &GgufLlamaParams) -> Result<Vec<(String, Tensor)>> {
    read_tensors(f, p, true)
}

/// The blocks of a quantised matrix with HF shape `[rows, cols]`, rows unpermuted as `name` needs.
fn kept_blocks(f: &GgufFile, p: &GgufLlamaParams, t: &TensorInfo, ty: QuantType) -> Result<Tensor> {
    let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
    let row_bytes = ty.row_bytes(cols);
    let mut data = f.tensor_bytes(t)?.to_vec();
    if let Some(heads) = permuted_heads(p, &t.name) {
        data = unpermute_rows(&data, heads, p.head_dim, row_bytes);
    }
    Ok(Tensor::from_vec(data, (rows, row_bytes), &Device::Cpu)?)
}

/// The head count whose rows llama.cpp's converter permuted in tensor `name` (Q and K of LLaMA
/// and LLaDA); None for every other tensor, and for Qwen2 (Dream), which it leaves as they are.
fn permuted_heads(p: &GgufLlamaParams, name: &str) -> Option<usize> {
    if p.arch == Architecture::Dream {
        return None;
    }
    if name.ends_with(".attn_q.weight") {
        Some(p.n_head)
    } else if name.ends_with(".attn_k.weight") {
        Some(p.n_kv_head)
    } else {
        None
    }
}

fn read_tensors(f: &GgufFile, p: &GgufLlamaParams, keep: bool) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::with_capacity(f.tensors.len());
    for t in &f.tensors {
        let (hf, expect) = hf_name(f, p, &t.name)?;
        // GGUF dims are [ne0 = in, ne1 = out]; HF wants [out, in].
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if shape != expect {
            return Err(f.err(format!(
                "tensor {} has shape {shape:?} (HF order), expected {expect:?} from the metadata",
                t.name
            )));
        }
        if let Some(ty) = QuantType::from_ggml_id(t.dtype).filter(|_| keep && shape.len() == 2) {
            tensors.push((quantized_name(&hf, ty), kept_blocks(f, p, t, ty)?));
            continue;
        }
        let mut data = f.dequantize(t)?;
        if let Some(heads) = permuted_heads(p, &t.name) {
            data = unpermute_rows(&data, heads, p.head_dim, p.hidden);
        }
        tensors.push((hf, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    let mut missing: Vec<String> = expected_names(p)
        .into_iter()
        .filter(|n| {
            !tensors
                .iter()
                .any(|(h, _)| h == n || parse_quantized_name(h).is_some_and(|(base, _)| base == n))
        })
        .collect();
    if !missing.is_empty() {
        missing.truncate(8);
        return Err(f.err(format!(
            "missing tensors (HF names): {}",
            missing.join(", ")
        )));
    }
    Ok(tensors
        .into_iter()
        .map(|(name, t)| (family_name(p.arch, &name), t))
        .collect())
}

/// The name the model family gives a weight imported under its LLaMA name (LLaDA has its own;
/// Dream's are LLaMA's), kept-quantised suffix included.
fn family_name(arch: Architecture, name: &str) -> String {
    if arch != Architecture::Llada {
        return name.to_owned();
    }
    match parse_quantized_name(name) {
        Some((base, ty)) => quantized_name(&llada::name_from_llama(base), ty),
        None => llada::name_from_llama(name),
    }
}

/// The vocabulary size and the bos/eos/padding ids, from the tokenizer metadata.
fn vocab_and_special_ids(f: &GgufFile) -> Result<(usize, [Option<u32>; 4])> {
    let vocab = f.array("tokenizer.ggml.tokens")?.len();
    let mut ids = [None; 4];
    for (slot, key) in ids.iter_mut().zip(["bos", "eos", "padding", "mask"]) {
        let key = format!("tokenizer.ggml.{key}_token_id");
        if let Some(id) = f.usize_value(&key)? {
            if id >= vocab {
                return Err(f.err(format!("{key} {id} is outside the vocabulary ({vocab})")));
            }
            *slot = Some(id as u32);
        }
    }
    Ok((vocab, ids))
}

fn read_params(
    f: &GgufFile,
    arch: Architecture,
    vocab: usize,
    special: [Option<u32>; 4],
) -> Result<GgufLlamaParams> {
    let p = &format!("{arch}.");
    let n_layer = f.required_usize(&format!("{p}block_count"))?;
    let hidden = f.required_usize(&format!("{p}embedding_length"))?;
    let n_head = f.required_usize(&format!("{p}attention.head_count"))?;
    let n_kv_head = f
        .usize_value(&format!("{p}attention.head_count_kv"))?
        .unwrap_or(n_head);
    let ffn = f.required_usize(&format!("{p}feed_forward_length"))?;
    let context_length = f.required_usize(&format!("{p}context_length"))?;
    let rope_theta = f
        .f64_value(&format!("{p}rope.freq_base"))?
        .unwrap_or(10000.0);
    let rms_eps = f
        .f64_value(&format!("{p}attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            f.err(format!(
                "metadata {p}attention.layer_norm_rms_epsilon is missing"
            ))
        })?;

    if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || hidden % n_head != 0 {
        return Err(f.err(format!(
            "{n_head} heads / {n_kv_head} KV heads do not fit hidden size {hidden}"
        )));
    }
    let head_dim = hidden / n_head;
    // key_length is written when head_dim != hidden / n_head; dlm's llama assumes equality.
    if let Some(k) = f.usize_value(&format!("{p}attention.key_length"))? {
        if k != head_dim {
            return Err(f.err(format!(
                "attention.key_length {k} != hidden/heads {head_dim}; not supported"
            )));
        }
    }
    // Partial rotary embeddings are not served: the rotary dimension must be the head dimension.
    if let Some(r) = f.usize_value(&format!("{p}rope.dimension_count"))? {
        if r != head_dim {
            return Err(f.err(format!(
                "rope.dimension_count {r} != head_dim {head_dim}; partial RoPE is not supported"
            )));
        }
    }
    if head_dim % 2 != 0 {
        return Err(f.err(format!("head_dim {head_dim} is odd; RoPE needs pairs")));
    }
    // Scaled RoPE (linear, yarn, llama3) changes positions; importing it as plain RoPE would
    // silently degrade long-context behaviour, so refuse it.
    if let Some(v) = f.get(&format!("{p}rope.scaling.type")) {
        match v.as_str() {
            Some("none") => {}
            other => {
                return Err(f.err(format!(
                    "RoPE scaling {other:?} is not supported (only none)"
                )))
            }
        }
    }
    if let Some(fac) = f.f64_value(&format!("{p}rope.scaling.factor"))? {
        if fac != 1.0 && f.get(&format!("{p}rope.scaling.type")).is_none() {
            return Err(f.err(format!("RoPE scaling factor {fac} is not supported")));
        }
    }
    // A corrupt block_count must not drive per-layer work (the missing-tensor check lists
    // names per layer); every layer has tensors, so it cannot exceed the tensor count.
    if n_layer > f.tensors.len() {
        return Err(f.err(format!(
            "block_count {n_layer} is larger than the tensor count {}",
            f.tensors.len()
        )));
    }
    if n_layer == 0 || ffn == 0 || vocab == 0 {
        return Err(f.err("block_count, feed_forward_length and the vocabulary must be non-zero"));
    }
    let [bos_id, eos_id, pad_id, mask_id] = special;
    Ok(GgufLlamaParams {
        arch,
        n_layer,
        hidden,
        n_head,
        n_kv_head,
        head_dim,
        ffn,
        vocab,
        rope_theta,
        rms_eps,
        context_length,
        bos_id,
        eos_id,
        pad_id,
        mask_id,
        tied: f.tensor("output.weight").is_none(),
        name: f.str_value("general.name").map(str::to_owned),
    })
}

/// HF name and expected HF shape of a GGUF tensor.
fn hf_name(f: &GgufFile, p: &GgufLlamaParams, name: &str) -> Result<(String, Vec<usize>)> {
    let (h, q, kv, ffn, v) = (
        p.hidden,
        p.n_head * p.head_dim,
        p.n_kv_head * p.head_dim,
        p.ffn,
        p.vocab,
    );
    let global = match name {
        "token_embd.weight" => Some(("model.embed_tokens.weight".to_owned(), vec![v, h])),
        "output_norm.weight" => Some(("model.norm.weight".to_owned(), vec![h])),
        "output.weight" => Some(("lm_head.weight".to_owned(), vec![v, h])),
        _ => None,
    };
    if let Some(g) = global {
        return Ok(g);
    }
    let unknown = || f.err(format!("unknown tensor {name} (not part of a llama model)"));
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    if layer >= p.n_layer {
        return Err(f.err(format!(
            "tensor {name}: layer {layer} >= block_count {}",
            p.n_layer
        )));
    }
    let (hf, shape) = match suffix {
        "attn_norm.weight" => ("input_layernorm.weight", vec![h]),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", vec![h]),
        "attn_q.weight" => ("self_attn.q_proj.weight", vec![q, h]),
        "attn_k.weight" => ("self_attn.k_proj.weight", vec![kv, h]),
        "attn_v.weight" => ("self_attn.v_proj.weight", vec![kv, h]),
        "attn_output.weight" => ("self_attn.o_proj.weight", vec![h, q]),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", vec![ffn, h]),
        "ffn_up.weight" => ("mlp.up_proj.weight", vec![ffn, h]),
        "ffn_down.weight" => ("mlp.down_proj.weight", vec![h, ffn]),
        "attn_q.bias" if p.arch == Architecture::Dream => ("self_attn.q_proj.bias", vec![q]),
        "attn_k.bias" if p.arch == Architecture::Dream => ("self_attn.k_proj.bias", vec![kv]),
        "attn_v.bias" if p.arch == Architecture::Dream => ("self_attn.v_proj.bias", vec![kv]),
        _ => return Err(unknown()),
    };
    Ok((format!("model.layers.{layer}.{hf}"), shape))
}

fn expected_names(p: &GgufLlamaParams) -> Vec<String> {
    let mut v = vec![
        "model.embed_tokens.weight".to_owned(),
        "model.norm.weight".to_owned(),
    ];
    for i in 0..p.n_layer {
        for s in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            v.push(format!("model.layers.{i}.{s}.weight"));
        }
        if p.arch == Architecture::Dream {
            for s in ["q_proj", "k_proj", "v_proj"] {
                v.push(format!("model.layers.{i}.self_attn.{s}.bias"));
            }
        }
    }
    v
}

/// Undoes llama.cpp's permutation of Q/K rows (made for interleaved-pair RoPE) so HF's
/// `rotate_half` RoPE applies: `W_hf = W.reshape(heads, hd/2, 2, in).swapaxes(1, 2)`, i.e.
/// HF row `h*hd + s*hd/2 + i` is GGUF row `h*hd + 2*i + s`. Shapes were checked by the caller.
/// `cols` is a row's width in elements of `w` (bytes, for quantised blocks).
fn unpermute_rows<T: Copy>(w: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    let half = head_dim / 2;
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let r = h * head_dim + 2 * i + s;
                out.extend_from_slice(&w[r * cols..(r + 1) * cols]);
            }
        }
    }
    out
}
