//! LLaDA (Nie et al. 2025, "Large Language Diffusion Models") under `LLaDAModelLM` names. Its
//! `block_type: llama` is the LLaMA block (llama.rs) in OLMo's naming:
//!
//! ```text
//! model.transformer.wte                      token embedding [V, D], V = `embedding_size`
//! model.transformer.blocks.i.attn_norm       RMSNorm before attention
//!                            q_proj k_proj v_proj attn_out
//!                            ff_norm         RMSNorm before the MLP
//!                            ff_proj         gate: the branch through SiLU
//!                            up_proj         the linear branch
//!                            ff_out          down projection [D, F]
//! model.transformer.ln_f                     final RMSNorm
//! model.transformer.ff_out                   head [V, D]; absent under `weight_tying`
//! ```
//!
//! A diffusion LM from the start: trained with full attention, logits at i score token i (no
//! shift). The released modeling file ignores `attention_mask`; here the mask stays an argument
//! and samplers pass a bidirectional one.

use std::path::Path;

use candle_core::Result;
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use super::config::{get_bool, get_f64, get_id, get_usize, need};
use super::llama::{projection_widths, rms_norm, Attention, Block, Llama, Mlp};
use super::{blocks, embedding_and_head, linear, Architecture, ModelConfig};
use crate::error::{Error, Result as DlmResult};
use crate::ops::WeightLayout;

/// The LLaMA model under LLaDA's names.
pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Llama> {
    let t = vb.pp("model").pp("transformer");
    // Full paths keep the head `model.transformer.ff_out` apart from `blocks.i.ff_out`.
    let (wte, head) = embedding_and_head(t.pp("wte"), t.pp("ff_out"), cfg)?;
    Llama::new(
        cfg,
        wte,
        blocks(t.pp("blocks"), cfg, block)?,
        rms_norm(t.pp("ln_f"), cfg)?,
        head,
    )
}

/// LLaDA's name of a weight that arrives under its LLaMA name (llama.cpp's GGUF names map to
/// LLaMA's): `model.layers.i.self_attn.o_proj.weight` → `model.transformer.blocks.i.attn_out.weight`.
pub fn name_from_llama(name: &str) -> String {
    const GLOBAL: [(&str, &str); 3] = [
        ("model.embed_tokens.weight", "model.transformer.wte.weight"),
        ("model.norm.weight", "model.transformer.ln_f.weight"),
        ("lm_head.weight", "model.transformer.ff_out.weight"),
    ];
    const IN_BLOCK: [(&str, &str); 9] = [
        ("input_layernorm.", "attn_norm."),
        ("post_attention_layernorm.", "ff_norm."),
        ("self_attn.q_proj.", "q_proj."),
        ("self_attn.k_proj.", "k_proj."),
        ("self_attn.v_proj.", "v_proj."),
        ("self_attn.o_proj.", "attn_out."),
        ("mlp.gate_proj.", "ff_proj."),
        ("mlp.up_proj.", "up_proj."),
        ("mlp.down_proj.", "ff_out."),
    ];
    if let Some((_, to)) = GLOBAL.iter().find(|(from, _)| *from == name) {
        return to.to_string();
    }
    let Some((layer, rest)) = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
    else {
        return name.to_string();
    };
    match IN_BLOCK.iter().find(|(from, _)| rest.starts_with(from)) {
        Some((from, to)) => format!(
            "model.transformer.blocks.{layer}.{to}{}",
            &rest[from.len()..]
        ),
        None => name.to_string(),
    }
}

fn block(vb: VarBuilder, cfg: &ModelConfig) -> Result<Block> {
    let (d, f, qkv_bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.attention_bias);
    let (q, kv) = projection_widths(cfg);
    let proj = |name: &str, d_in: usize, d_out: usize, bias: bool| {
        linear(vb.pp(name), d_in, d_out, bias, WeightLayout::OutIn)
    };
    let attention = Attention::new(
        proj("q_proj", d, q, qkv_bias)?,
        proj("k_proj", d, kv, qkv_bias)?,
        proj("v_proj", d, kv, qkv_bias)?,
        proj("attn_out", q, d, false)?,
        cfg,
    );
    let mlp = Mlp::new(
        proj("ff_proj", d, f, false)?,
        proj("up_proj", d, f, false)?,
        proj("ff_out", f, d, false)?,
    );
    Ok(Block::new(
        rms_norm(vb.pp("attn_norm"), cfg)?,
        attention,
        rms_norm(vb.pp("ff_norm"), cfg)?,
        mlp,
    ))
}

/// The keys of LLaDA's `ModelConfig` dataclass, each refused by name where it asks for something
/// the released checkpoints do not use and this port does not implement. A missing key takes the
/// dataclass default (OLMo's: sequential block, swiglu, LayerNorm, biases, no RoPE, tied head),
/// which `save_pretrained` never leaves out.
pub(super) fn config(raw: &Map<String, Value>, path: &Path) -> DlmResult<ModelConfig> {
    let refuse = |key: &str, why: &str| Err(Error::config(path, format!("`{key}`: {why}")));
    let text = |key: &str| raw.get(key).and_then(Value::as_str);
    let on = |key: &str| get_bool(raw, key) == Some(true);
    let or = |key: &str, default: bool| get_bool(raw, key).unwrap_or(default);
    match text("block_type") {
        Some("llama") => {}
        other => {
            return refuse(
                "block_type",
                &format!("{other:?} is not implemented (only \"llama\")"),
            )
        }
    }
    match text("activation_type").unwrap_or("swiglu") {
        "silu" => {}
        act => {
            return refuse(
                "activation_type",
                &format!("`{act}` is not implemented (only silu)"),
            )
        }
    }
    match text("layer_norm_type").unwrap_or("default") {
        "rms" => {}
        norm => {
            return refuse(
                "layer_norm_type",
                &format!("`{norm}` is not implemented (only rms)"),
            )
        }
    }
    if or("include_bias", true) {
        return refuse(
            "include_bias",
            "biases on every linear layer are not implemented",
        );
    }
    for (key, why) in [
        ("bias_for_layer_norm", "norm biases are not implemented"),
        ("alibi", "ALiBi is not implemented (LLaDA uses RoPE)"),
        ("attention_layer_norm", "q/k norms are not implemented"),
        ("input_emb_norm", "an embedding norm is not implemented"),
        ("scale_logits", "scaled logits are not implemented"),
        ("multi_query_attention", "use `n_kv_heads` instead"),
    ] {
        if on(key) {
            return refuse(key, why);
        }
    }
    if !or("rope", false) {
        return refuse("rope", "a model without RoPE is not implemented");
    }
    if !or("layer_norm_with_affine", true) {
        return refuse(
            "layer_norm_with_affine",
            "norms without weights are not implemented",
        );
    }
    if get_usize(raw, "block_group_size").is_some_and(|g| g != 1) {
        return refuse(
            "block_group_size",
            "block groups are not implemented (only 1)",
        );
    }
    if raw.get("clip_qkv").is_some_and(|v| !v.is_null()) {
        return refuse("clip_qkv", "clipping q/k/v is not implemented");
    }
    let d = need(raw, path, "d_model")?;
    let heads = need(raw, path, "n_heads")?;
    let kv_heads = get_usize(raw, "n_kv_heads").unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || d % heads != 0 {
        return Err(Error::config(
            path,
            format!("`n_heads` {heads} must divide `d_model` {d} and be a multiple of `n_kv_heads` {kv_heads}"),
        ));
    }
    let intermediate = get_usize(raw, "mlp_hidden_size")
        .unwrap_or_else(|| get_usize(raw, "mlp_ratio").unwrap_or(4) * d);
    // The embedding's rows: `vocab_size` may count fewer (the table is padded).
    let rows = match get_usize(raw, "embedding_size") {
        Some(rows) => rows,
        None => need(raw, path, "vocab_size")?,
    };
    Ok(ModelConfig {
        arch: Architecture::Llada,
        vocab_size: rows,
        hidden_size: d,
        num_layers: need(raw, path, "n_layers")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: d / heads,
        intermediate_size: intermediate,
        max_position_embeddings: get_usize(raw, "max_sequence_length").unwrap_or(4096),
        norm_eps: get_f64(raw, "rms_norm_eps").unwrap_or(1e-5),
        rope_theta: get_f64(raw, "rope_theta").unwrap_or(10000.0),
        tie_word_embeddings: or("weight_tying", true),
        attention_bias: on("include_qkv_bias"),
        o_proj_bias: false,
        mlp_bias: false,
        bos_token_id: get_id(raw, "bos_token_id"),
        eos_token_id: get_id(raw, "eos_token_id"),
        pad_token_id: get_id(raw, "pad_token_id"),
        mask_token_id: get_id(raw, "mask_token_id"),
        raw: Map::new(),
    })
}
