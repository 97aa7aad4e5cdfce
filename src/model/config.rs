//! HF `config.json` → a resolved, validated `ModelConfig`. Anything the code cannot serve is
//! refused here, by name, instead of producing silently wrong logits later.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::named::{display_and_from_str, Named};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Gpt2,
    Llama,
    Llada,
    Dream,
}

impl Named for Architecture {
    const WHAT: &'static str = "architecture";
    const ALL: &'static [Self] = &[Self::Gpt2, Self::Llama, Self::Llada, Self::Dream];

    fn name(self) -> &'static str {
        match self {
            Architecture::Gpt2 => "gpt2",
            Architecture::Llama => "llama",
            Architecture::Llada => "llada",
            Architecture::Dream => "dream",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Architecture::Gpt2 => "GPT-2: learned positions, LayerNorm, GELU MLP",
            Architecture::Llama => "LLaMA: RoPE, RMSNorm, SwiGLU MLP, grouped KV heads",
            Architecture::Llada => {
                "LLaDA: LLaMA blocks under OLMo names, a diffusion LM from the start (no shift)"
            }
            Architecture::Dream => {
                "Dream: Qwen2 (LLaMA with q/k/v biases), a diffusion LM adapted from Qwen2.5"
            }
        }
    }
}
display_and_from_str!(Architecture);

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    /// RoPE base (every family but GPT-2).
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// q/k/v biases (LLaMA's `attention_bias`, always in Qwen2/Dream, LLaDA's `include_qkv_bias`).
    pub attention_bias: bool,
    /// The attention output projection's bias (LLaMA's `attention_bias` only).
    pub o_proj_bias: bool,
    /// gate/up/down biases.
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// The diffusion [MASK] id, recorded in config.json as `mask_token_id`.
    pub mask_token_id: Option<u32>,
    /// The config.json as read; unknown keys survive a load/save round trip.
    pub raw: Map<String, Value>,
}

pub(super) fn get_usize(raw: &Map<String, Value>, key: &str) -> Option<usize> {
    raw.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

pub(super) fn get_f64(raw: &Map<String, Value>, key: &str) -> Option<f64> {
    raw.get(key).and_then(Value::as_f64)
}

pub(super) fn get_bool(raw: &Map<String, Value>, key: &str) -> Option<bool> {
    raw.get(key).and_then(Value::as_bool)
}

/// A token id, or the first of a list (HF allows `eos_token_id: [2, 3]`).
pub(super) fn get_id(raw: &Map<String, Value>, key: &str) -> Option<u32> {
    match raw.get(key)? {
        Value::Number(n) => n.as_u64().map(|v| v as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    }
}

/// An integer `key` the config must have.
pub(super) fn need(raw: &Map<String, Value>, path: &Path, key: &str) -> Result<usize> {
    get_usize(raw, key)
        .ok_or_else(|| Error::config(path, format!("missing or non-integer `{key}`")))
}

/// What `no model_type` and `unknown model_type` errors list.
const SERVED: &str = "dlm serves gpt2, llama, llada and Dream";

impl ModelConfig {
    /// The dtype config.json says the weights are stored in (`torch_dtype`, or the newer
    /// `dtype`), when it names one dlm reads.
    pub fn stored_dtype(&self) -> Option<super::runtime::WeightDtype> {
        let name = self.raw.get("torch_dtype").or(self.raw.get("dtype"))?;
        name.as_str()?.parse().ok()
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        Self::from_json(value, path)
    }

    /// Resolves an HF config. `path` is only used in error messages.
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Error::config(path, "config.json is not a JSON object"));
        };
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("");
        let bad = |msg: String| Err(Error::config(path, msg));
        let config = match model_type {
            "gpt2" => gpt2(&raw, path)?,
            "llama" => llama_like(&raw, path, Architecture::Llama)?,
            // Dream's released config writes `Dream`.
            "Dream" | "dream" => llama_like(&raw, path, Architecture::Dream)?,
            "llada" => super::llada::config(&raw, path)?,
            "" => return bad(format!("no `model_type`; {SERVED}")),
            other => return bad(format!("model_type `{other}` is not supported; {SERVED}")),
        };
        if config.head_dim == 0
            || config.head_dim % 2 != 0
            || config.num_layers == 0
            || config.vocab_size == 0
        {
            return bad(format!(
                "degenerate shape: head_dim {}, layers {}, vocab {}",
                config.head_dim, config.num_layers, config.vocab_size
            ));
        }
        if config.arch == Architecture::Gpt2 && config.hidden_size % config.num_heads != 0 {
            return bad(format!(
                "n_embd {} is not a multiple of n_head {}",
                config.hidden_size, config.num_heads
            ));
        }
        if let Some(id) = config
            .mask_token_id
            .filter(|&id| id as usize >= config.vocab_size)
        {
            return bad(format!(
                "`mask_token_id` {id} is outside the vocabulary of {} rows",
                config.vocab_size
            ));
        }
        Ok(Self { raw, ..config })
    }
    /// The HF config.json to write next to the weights: the original keys, with the ones dlm
    /// owns (vocabulary size, special ids, the mask id, dtype) brought up to date.
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("vocab_size".into(), self.vocab_size.into());
        raw.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        for (key, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
            ("mask_token_id", self.mask_token_id),
        ] {
            if let Some(id) = id {
                raw.insert(key.into(), id.into());
            }
        }
        raw.insert("torch_dtype".into(), dtype.into());
        raw.insert("dtype".into(), dtype.into());
        Value::Object(raw)
    }

    /// Number of parameters, counting a tied matrix once.
    pub fn num_parameters(&self) -> usize {
        let (d, v, f, n) = (
            self.hidden_size,
            self.vocab_size,
            self.intermediate_size,
            self.num_layers,
        );
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        match self.arch {
            Architecture::Gpt2 => {
                let block =
                    2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
                v * d + self.max_position_embeddings * d + n * block + 2 * d + head
            }
            Architecture::Llama | Architecture::Llada | Architecture::Dream => {
                let ab = usize::from(self.attention_bias) * (q + 2 * kv)
                    + usize::from(self.o_proj_bias) * d;
                let mb = if self.mlp_bias { 2 * f + d } else { 0 };
                let block = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f + ab + mb;
                v * d + n * block + d + head
            }
        }
    }
}

/// GPT-2's `GPT2Config` keys.
fn gpt2(raw: &Map<String, Value>, path: &Path) -> Result<ModelConfig> {
    let bad = |msg: String| Err(Error::config(path, msg));
    let act = raw
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new");
    if act != "gelu_new" && act != "gelu_pytorch_tanh" {
        return bad(format!(
            "GPT-2 activation `{act}` is not supported (only gelu_new)"
        ));
    }
    if raw.get("scale_attn_by_inverse_layer_idx") == Some(&Value::Bool(true)) {
        return bad("GPT-2 `scale_attn_by_inverse_layer_idx` is not supported".into());
    }
    if raw.get("scale_attn_weights") == Some(&Value::Bool(false)) {
        return bad("GPT-2 `scale_attn_weights: false` is not supported".into());
    }
    let hidden = need(raw, path, "n_embd")?;
    let heads = need(raw, path, "n_head")?;
    Ok(ModelConfig {
        arch: Architecture::Gpt2,
        vocab_size: need(raw, path, "vocab_size")?,
        hidden_size: hidden,
        num_layers: need(raw, path, "n_layer")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: hidden / heads.max(1),
        intermediate_size: get_usize(raw, "n_inner").unwrap_or(4 * hidden),
        max_position_embeddings: need(raw, path, "n_positions")?,
        norm_eps: get_f64(raw, "layer_norm_epsilon").unwrap_or(1e-5),
        rope_theta: 0.0,
        tie_word_embeddings: get_bool(raw, "tie_word_embeddings").unwrap_or(true),
        attention_bias: true,
        o_proj_bias: true,
        mlp_bias: true,
        bos_token_id: get_id(raw, "bos_token_id"),
        eos_token_id: get_id(raw, "eos_token_id"),
        pad_token_id: get_id(raw, "pad_token_id"),
        mask_token_id: get_id(raw, "mask_token_id"),
        raw: Map::new(),
    })
}

/// HF `LlamaConfig` keys, which Qwen2's (Dream's) share: Dream differs in its q/k/v biases (no
/// `attention_bias` key; never on `o_proj`) and its optional sliding window.
fn llama_like(raw: &Map<String, Value>, path: &Path, arch: Architecture) -> Result<ModelConfig> {
    let bad = |msg: String| Err(Error::config(path, msg));
    let family = match arch {
        Architecture::Dream => "Dream",
        _ => "LLaMA",
    };
    let act = raw
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        return bad(format!(
            "{family} activation `{act}` is not supported (only silu)"
        ));
    }
    if arch == Architecture::Dream && get_bool(raw, "use_sliding_window") == Some(true) {
        return bad("`use_sliding_window`: sliding-window attention is not implemented".into());
    }
    // Both spellings of the rope base: top-level (transformers 4) and
    // `rope_parameters` (transformers 5).
    let params = raw.get("rope_parameters").and_then(Value::as_object);
    let kind_of = |v: Option<&Value>| {
        v.and_then(|s| s.get("rope_type").or(s.get("type")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let scaling = raw.get("rope_scaling").filter(|s| !s.is_null());
    for (key, kind) in [
        ("rope_parameters", kind_of(raw.get("rope_parameters"))),
        ("rope_scaling", kind_of(scaling)),
    ] {
        if let Some(kind) = kind.filter(|k| k != "default") {
            return bad(format!(
                "`{key}`: rope scaling `{kind}` is not implemented; dlm serves plain RoPE only"
            ));
        }
    }
    if scaling.is_some() && kind_of(scaling).is_none() {
        return bad("`rope_scaling` without a recognised `rope_type` is not implemented".into());
    }
    let rope_theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or_else(|| get_f64(raw, "rope_theta"))
        .unwrap_or(10000.0);
    let hidden = need(raw, path, "hidden_size")?;
    let heads = need(raw, path, "num_attention_heads")?;
    let kv_heads = get_usize(raw, "num_key_value_heads").unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return bad(format!(
            "{heads} attention heads are not a multiple of {kv_heads} key/value heads"
        ));
    }
    let attention_bias = get_bool(raw, "attention_bias").unwrap_or(false);
    Ok(ModelConfig {
        arch,
        vocab_size: need(raw, path, "vocab_size")?,
        hidden_size: hidden,
        num_layers: need(raw, path, "num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: get_usize(raw, "head_dim").unwrap_or(hidden / heads.max(1)),
        intermediate_size: need(raw, path, "intermediate_size")?,
        max_position_embeddings: get_usize(raw, "max_position_embeddings").unwrap_or(2048),
        norm_eps: get_f64(raw, "rms_norm_eps").unwrap_or(1e-6),
        rope_theta,
        tie_word_embeddings: get_bool(raw, "tie_word_embeddings").unwrap_or(false),
        attention_bias: attention_bias || arch == Architecture::Dream,
        o_proj_bias: attention_bias && arch == Architecture::Llama,
        mlp_bias: get_bool(raw, "mlp_bias").unwrap_or(false),
        bos_token_id: get_id(raw, "bos_token_id"),
        eos_token_id: get_id(raw, "eos_token_id"),
        pad_token_id: get_id(raw, "pad_token_id"),
        mask_token_id: get_id(raw, "mask_token_id"),
        raw: Map::new(),
    })
}
