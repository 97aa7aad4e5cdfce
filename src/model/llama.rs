//! LLaMA (Touvron et al. 2023) under HF `LlamaForCausalLM` names: RMSNorm, RoPE (rotate_half),
//! grouped-query attention, SwiGLU, tied or untied head. The attention mask is an argument.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::{linear, lm_head, KvCache, LanguageModel, LayerPass, ModelConfig, Pass};
use crate::ops::{
    scaled_dot_product_attention, swiglu, AttentionMask, Embedding, Linear, RmsNorm, Rope,
    WeightLayout,
};

fn rms_norm(vb: VarBuilder, d: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm::new(vb.get(d, "weight")?, eps))
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
        let q = rope.apply_heads(&self.q_proj.forward(x)?, self.n_head, pass.offset)?;
        let k = rope.apply_heads(&self.k_proj.forward(x)?, self.n_kv_head, pass.offset)?;
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
        let (d, eps) = (cfg.hidden_size, cfg.norm_eps);
        Ok(Self {
            input_layernorm: rms_norm(vb.pp("input_layernorm"), d, eps)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: rms_norm(vb.pp("post_attention_layernorm"), d, eps)?,
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
        let d = cfg.hidden_size;
        let embed = m.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let lm_head = lm_head(&vb, cfg, &embed)?;
        Ok(Self {
            config: cfg.clone(),
            embed_tokens: Embedding::new(embed),
            layers: (0..cfg.num_layers)
                .map(|i| Block::load(m.pp(format!("layers.{i}")), cfg))
                .collect::<Result<_>>()?,
            norm: rms_norm(m.pp("norm"), d, cfg.norm_eps)?,
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
