//! LLaMA (Touvron et al. 2023) under HF `LlamaForCausalLM` names: RMSNorm, RoPE (rotate_half),
//! grouped-query attention, SwiGLU, tied or untied head. The attention mask is an argument.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::pass::{LayerPass, Pass};
use super::{blocks, embedding_and_head, linear, KvCache, LanguageModel, ModelConfig};
use crate::ops::{
    scaled_dot_product_attention, swiglu, AttentionMask, Embedding, Linear, RmsNorm, Rope,
    WeightLayout,
};

/// An RMSNorm over the hidden features.
fn rms_norm(vb: VarBuilder, cfg: &ModelConfig) -> Result<RmsNorm> {
    Ok(RmsNorm::new(
        vb.get(cfg.hidden_size, "weight")?,
        cfg.norm_eps,
    ))
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, dh, bias) = (cfg.hidden_size, cfg.head_dim, cfg.attention_bias);
        let (q, kv) = (cfg.num_heads * dh, cfg.num_kv_heads * dh);
        Ok(Self {
            q_proj: linear(vb.pp("q_proj"), d, q, bias, WeightLayout::OutIn)?,
            k_proj: linear(vb.pp("k_proj"), d, kv, bias, WeightLayout::OutIn)?,
            v_proj: linear(vb.pp("v_proj"), d, kv, bias, WeightLayout::OutIn)?,
            o_proj: linear(vb.pp("o_proj"), q, d, bias, WeightLayout::OutIn)?,
            n_head: cfg.num_heads,
            n_kv_head: cfg.num_kv_heads,
            head_dim: dh,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope, mut pass: LayerPass<'_>) -> Result<Tensor> {
        let (b, l, _d) = x.dims3()?;
        let dh = self.head_dim;
        // [B, n, L, Dh] each.
        let q = rope.apply_heads(&self.q_proj.forward(x)?, self.n_head, pass.offset())?;
        let k = rope.apply_heads(&self.k_proj.forward(x)?, self.n_kv_head, pass.offset())?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, l, self.n_kv_head, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let (k, v) = pass.append_kv(k, v)?;
        let bias = pass.bias(l, k.dim(2)?, &q)?;
        let y = scaled_dot_product_attention(&q, &k, &v, bias.as_ref())?; // [B, H, L, Dh]
        self.o_proj
            .forward(&y.transpose(1, 2)?.reshape((b, l, self.n_head * dh))?)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, f, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: linear(vb.pp("gate_proj"), d, f, bias, WeightLayout::OutIn)?,
            up_proj: linear(vb.pp("up_proj"), d, f, bias, WeightLayout::OutIn)?,
            down_proj: linear(vb.pp("down_proj"), f, d, bias, WeightLayout::OutIn)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        self.down_proj
            .forward(&swiglu(&gate, &self.up_proj.forward(x)?)?)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(vb.pp("input_layernorm"), cfg)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: rms_norm(vb.pp("post_attention_layernorm"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope, pass: LayerPass<'_>) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let x = (x + self.self_attn.forward(&h, rope, pass)?)?;
        &x + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

pub struct Llama {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
}

impl Llama {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let m = vb.pp("model");
        let (embed_tokens, lm_head) = embedding_and_head(m.pp("embed_tokens"), &vb, cfg)?;
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            layers: blocks(m.pp("layers"), cfg, Block::load)?,
            norm: rms_norm(m.pp("norm"), cfg)?,
            lm_head,
            rope: Rope::new(
                cfg.rope_theta,
                cfg.head_dim,
                cfg.max_position_embeddings,
                vb.device(),
            )?,
        })
    }
}

impl LanguageModel for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn hidden(
        &self,
        ids: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let pass = Pass::start(ids, self.config.vocab_size, mask, cache)?;
        let x = self.embed_tokens.forward(ids)?;
        let x = pass.through(&self.layers, x, |block, x, layer| {
            block.forward(x, &self.rope, layer)
        })?;
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}
