//! Dream (Ye et al. 2025, "Dream 7B") under `DreamModel` names, which are Qwen2's, which are
//! LLaMA's: `model.embed_tokens`, `model.layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj,
//! post_attention_layernorm, mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`. So the model is
//! llama.rs's, with the two things Qwen2 adds: q/k/v biases (no `o_proj` bias; the config sets
//! them) and `nn.Embedding(padding_idx = pad_token_id)`, whose pad row is used as stored but
//! never trained.
//!
//! A diffusion LM adapted from Qwen2.5: full attention, and logits at i score token i+1, read at
//! inference as `cat(logits[:, :1], logits[:, :-1])`.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::llama::Llama;
use super::ModelConfig;

pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Llama> {
    Ok(Llama::load(vb, cfg)?.with_padding_idx(cfg.pad_token_id))
}
