//! LLaMA (Touvron et al. 2023) under HF `LlamaForCausalLM` names: RMSNorm, RoPE (rotate_half),
//! grouped-query attention, SwiGLU, tied or untied head. The attention mask is an argument.
//! Attention, MLP and block are built from loaded parts (`new`), so the families that compute
//! the same thing under other names (llada.rs, dream.rs) only say where each weight lives.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::pass::{LayerPass, Pass};
use super::{blocks, embedding_and_head, linear, KvCache, LanguageModel, ModelConfig};
use crate::ops::{
    maybe_dropout, scaled_dot_product_attention, swiglu, AttentionMask, Dropout, Embedding, Linear,
    RmsNorm, Rope, WeightLayout,
};

/// An RMSNorm over the hidden features.
pub(super) fn rms_norm(vb: VarBuilder, cfg: &ModelConfig) -> Result<RmsNorm> {
    Ok(RmsNorm::new(
        vb.get(cfg.hidden_size, "weight")?,
        cfg.norm_eps,
    ))
}

/// Grouped-query self-attention with RoPE on q and k.
pub(super) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// Attention's products in bf16 operands (a bf16 model's inference, `widen_activations`;
    /// mixed-precision training, `attention_in_bf16`).
    bf16_products: bool,
}

impl Attention {
    /// The projections of one layer, already loaded: q [H·Dh, D], k and v [K·Dh, D], o [D, H·Dh].
    pub(super) fn new(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        cfg: &ModelConfig,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            n_head: cfg.num_heads,
            n_kv_head: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            bf16_products: false,
        }
    }

    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, bias) = (cfg.hidden_size, cfg.attention_bias);
        let (q, kv) = projection_widths(cfg);
        Ok(Self::new(
            linear(vb.pp("q_proj"), d, q, bias, WeightLayout::OutIn)?,
            linear(vb.pp("k_proj"), d, kv, bias, WeightLayout::OutIn)?,
            linear(vb.pp("v_proj"), d, kv, bias, WeightLayout::OutIn)?,
            linear(vb.pp("o_proj"), q, d, cfg.o_proj_bias, WeightLayout::OutIn)?,
            cfg,
        ))
    }

    fn forward(&self, x: &Tensor, rope: &Rope, mut pass: LayerPass<'_>) -> Result<Tensor> {
        let (b, l, _d) = x.dims3()?;
        let dh = self.head_dim;
        let [q, k, v] = Linear::forward_each([&self.q_proj, &self.k_proj, &self.v_proj], x)?;
        // [B, n, L, Dh] each.
        let q = rope.apply_heads(&q, self.n_head, pass.offset())?;
        let k = rope.apply_heads(&k, self.n_kv_head, pass.offset())?;
        let v = v
            .reshape((b, l, self.n_kv_head, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let (k, v) = pass.append_kv(k, v)?;
        let bias = pass.bias(l, k.dim(2)?, &q)?;
        let y = scaled_dot_product_attention(&q, &k, &v, bias.as_ref(), self.bf16_products)?; // [B, H, L, Dh]
        self.o_proj
            .forward(&y.transpose(1, 2)?.reshape((b, l, self.n_head * dh))?)
    }
}

/// The SiLU-gated MLP: down(silu(gate(x)) · up(x)).
pub(super) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// gate (the branch through SiLU) and up [F, D], down [D, F], already loaded.
    pub(super) fn new(gate_proj: Linear, up_proj: Linear, down_proj: Linear) -> Self {
        Self {
            gate_proj,
            up_proj,
            down_proj,
        }
    }

    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, f, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self::new(
            linear(vb.pp("gate_proj"), d, f, bias, WeightLayout::OutIn)?,
            linear(vb.pp("up_proj"), d, f, bias, WeightLayout::OutIn)?,
            linear(vb.pp("down_proj"), f, d, bias, WeightLayout::OutIn)?,
        ))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_each([&self.gate_proj, &self.up_proj], x)?;
        self.down_proj.forward(&swiglu(&gate, &up)?)
    }
}

/// A pre-norm block: x += attn(norm(x)); x += mlp(norm(x)).
pub(super) struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    pub(super) fn new(
        input_layernorm: RmsNorm,
        self_attn: Attention,
        post_attention_layernorm: RmsNorm,
        mlp: Mlp,
    ) -> Self {
        Self {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        }
    }

    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self::new(
            rms_norm(vb.pp("input_layernorm"), cfg)?,
            Attention::load(vb.pp("self_attn"), cfg)?,
            rms_norm(vb.pp("post_attention_layernorm"), cfg)?,
            Mlp::load(vb.pp("mlp"), cfg)?,
        ))
    }

    /// `drop`: training dropout on each branch's output (`LanguageModel::set_dropout`).
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        pass: LayerPass<'_>,
        drop: Option<&Dropout>,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let x = (x + maybe_dropout(self.self_attn.forward(&h, rope, pass)?, drop)?)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        &x + maybe_dropout(self.mlp.forward(&h)?, drop)?
    }
}

pub struct Llama {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    /// Set while training with `--dropout`.
    dropout: Option<Arc<Dropout>>,
}

impl Llama {
    /// The model from its parts, already loaded; the RoPE tables come from `cfg`.
    pub(super) fn new(
        cfg: &ModelConfig,
        embed_tokens: Embedding,
        layers: Vec<Block>,
        norm: RmsNorm,
        lm_head: Linear,
    ) -> Result<Self> {
        let rope = Rope::new(
            cfg.rope_theta,
            cfg.head_dim,
            cfg.max_position_embeddings,
            norm.weight.device(),
        )?;
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            dropout: None,
        })
    }

    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let m = vb.pp("model");
        let (embed_tokens, lm_head) =
            embedding_and_head(m.pp("embed_tokens"), vb.pp("lm_head"), cfg)?;
        Self::new(
            cfg,
            embed_tokens,
            blocks(m.pp("layers"), cfg, Block::load)?,
            rms_norm(m.pp("norm"), cfg)?,
            lm_head,
        )
    }

    /// The same model with `padding_idx` on its token embedding (see `Embedding`).
    pub(super) fn with_padding_idx(self, padding_idx: Option<u32>) -> Self {
        Self {
            embed_tokens: self.embed_tokens.with_padding_idx(padding_idx),
            ..self
        }
    }
}

/// The widths of the query projection (H·Dh) and of each key/value projection (K·Dh).
pub(super) fn projection_widths(cfg: &ModelConfig) -> (usize, usize) {
    (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    )
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
        let drop = self.dropout.as_deref();
        let x = maybe_dropout(self.embed_tokens.forward(ids)?, drop)?;
        let x = pass.through(&self.layers, x, |block, x, layer| {
            block.forward(x, &self.rope, layer, drop)
        })?;
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    fn attention_in_bf16(&mut self) {
        for block in &mut self.layers {
            block.self_attn.bf16_products = true;
        }
    }

    fn set_dropout(&mut self, dropout: Option<Arc<Dropout>>) -> bool {
        self.dropout = dropout;
        true
    }

    fn widen_activations(&mut self) -> Result<bool> {
        if !super::widens(&self.embed_tokens) {
            return Ok(false);
        }
        self.embed_tokens.emit = Some(DType::F32);
        for block in &mut self.layers {
            block.self_attn.bf16_products = true;
            super::widen(&mut block.input_layernorm.weight)?;
            super::widen(&mut block.post_attention_layernorm.weight)?;
        }
        super::widen(&mut self.norm.weight)?;
        Ok(true)
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = Vec::with_capacity(7 * self.layers.len() + 1);
        for block in &mut self.layers {
            let (a, m) = (&mut block.self_attn, &mut block.mlp);
            all.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            all.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        all.push(&mut self.lm_head);
        all
    }
}
