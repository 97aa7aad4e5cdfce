//! GPT-2 (Radford et al. 2019) under HF `GPT2LMHeadModel` names: learned positions, pre-norm
//! blocks, gelu_new MLP, tied head. The attention mask is an argument; nothing here is causal by
//! construction. Conv1D weights stay `[in, out]` as HF stores them (`WeightLayout::InOut`): the
//! four of them are c_attn, attn.c_proj, c_fc and mlp.c_proj.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::pass::{LayerPass, Pass};
use super::{blocks, embedding_and_head, linear, KvCache, LanguageModel, ModelConfig};
use crate::ops::{
    gelu_new, maybe_dropout, packed_self_attention, scaled_dot_product_attention, AttentionMask,
    Dropout, Embedding, LayerNorm, Linear, WeightLayout,
};

/// A LayerNorm over the hidden features.
fn layer_norm(vb: VarBuilder, cfg: &ModelConfig) -> Result<LayerNorm> {
    let d = cfg.hidden_size;
    Ok(LayerNorm::new(
        vb.get(d, "weight")?,
        vb.get(d, "bias")?,
        cfg.norm_eps,
    ))
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    /// Attention's products in bf16 operands (a bf16 model's inference, `widen_activations`;
    /// mixed-precision training, `attention_in_bf16`).
    bf16_products: bool,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            c_attn: linear(vb.pp("c_attn"), d, 3 * d, true, WeightLayout::InOut)?,
            c_proj: linear(vb.pp("c_proj"), d, d, true, WeightLayout::InOut)?,
            n_head: cfg.num_heads,
            bf16_products: false,
        })
    }

    fn forward(&self, x: &Tensor, mut pass: LayerPass<'_>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let dh = d / self.n_head;
        let qkv = self.c_attn.forward(x)?; // [B, L, 3D], split q | k | v
        if !pass.is_cached() {
            // No cache: one op reads the heads in place (fused on CPU).
            let bias = pass.bias(l, l, &qkv)?;
            let y = packed_self_attention(&qkv, self.n_head, bias.as_ref(), self.bf16_products)?; // [B, L, D]
            return self.c_proj.forward(&y);
        }
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape((b, l, self.n_head, dh))?
                .transpose(1, 2)?
                .contiguous() // [B, H, L, Dh]
        };
        let q = heads(0)?;
        let (k, v) = pass.append_kv(heads(1)?, heads(2)?)?;
        let bias = pass.bias(l, k.dim(2)?, &q)?;
        let y = scaled_dot_product_attention(&q, &k, &v, bias.as_ref(), self.bf16_products)?;
        self.c_proj.forward(&y.transpose(1, 2)?.reshape((b, l, d))?)
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            c_fc: linear(vb.pp("c_fc"), d, f, true, WeightLayout::InOut)?,
            c_proj: linear(vb.pp("c_proj"), f, d, true, WeightLayout::InOut)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&gelu_new(&self.c_fc.forward(x)?)?)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            ln_1: layer_norm(vb.pp("ln_1"), cfg)?,
            attn: Attention::load(vb.pp("attn"), cfg)?,
            ln_2: layer_norm(vb.pp("ln_2"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, pass: LayerPass<'_>, drop: Option<&Dropout>) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln_1.forward(x)?, pass)?;
        let x = (x + maybe_dropout(a, drop)?)?;
        &x + maybe_dropout(self.mlp.forward(&self.ln_2.forward(&x)?)?, drop)?
    }
}

pub struct Gpt2 {
    config: ModelConfig,
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    /// Set while training with `--dropout`.
    dropout: Option<Arc<Dropout>>,
}

impl Gpt2 {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let t = vb.pp("transformer");
        let (wte, lm_head) = embedding_and_head(t.pp("wte"), vb.pp("lm_head"), cfg)?;
        let wpe = t.get((cfg.max_position_embeddings, cfg.hidden_size), "wpe.weight")?;
        Ok(Self {
            config: cfg.clone(),
            wte,
            wpe: Embedding::new(wpe),
            h: blocks(t.pp("h"), cfg, Block::load)?,
            ln_f: layer_norm(t.pp("ln_f"), cfg)?,
            lm_head,
            dropout: None,
        })
    }
}

impl LanguageModel for Gpt2 {
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
        let (_b, l) = ids.dims2()?;
        let offset = pass.offset();
        if offset + l > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} positions exceeds GPT-2's {} learned positions",
                offset + l,
                self.config.max_position_embeddings
            );
        }
        let positions = self.wpe.weight.narrow(0, offset, l)?; // [L, D]
        let x = self.wte.forward(ids)?.broadcast_add(&positions)?;
        let drop = self.dropout.as_deref();
        let x = maybe_dropout(x, drop)?;
        let x = pass.through(&self.h, x, |block, x, layer| block.forward(x, layer, drop))?;
        self.ln_f.forward(&x)
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    fn widen_activations(&mut self) -> Result<bool> {
        if !super::widens(&self.wte) {
            return Ok(false);
        }
        self.wte.emit = Some(DType::F32);
        super::widen(&mut self.wpe.weight)?;
        for block in &mut self.h {
            block.attn.bf16_products = true;
            for ln in [&mut block.ln_1, &mut block.ln_2] {
                super::widen(&mut ln.weight)?;
                super::widen(&mut ln.bias)?;
            }
        }
        super::widen(&mut self.ln_f.weight)?;
        super::widen(&mut self.ln_f.bias)?;
        Ok(true)
    }

    fn attention_in_bf16(&mut self) {
        for block in &mut self.h {
            block.attn.bf16_products = true;
        }
    }

    fn set_dropout(&mut self, dropout: Option<Arc<Dropout>>) -> bool {
        self.dropout = dropout;
        true
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = Vec::with_capacity(4 * self.h.len() + 1);
        for block in &mut self.h {
            let (a, m) = (&mut block.attn, &mut block.mlp);
            all.extend([&mut a.c_attn, &mut a.c_proj, &mut m.c_fc, &mut m.c_proj]);
        }
        all.push(&mut self.lm_head);
        all
    }
}
