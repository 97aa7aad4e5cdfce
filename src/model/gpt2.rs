//! GPT-2 (Radford et al. 2019) under HF `GPT2LMHeadModel` names: learned positions, pre-norm
//! blocks, gelu_new MLP, tied head. The attention mask is an argument; nothing here is causal by
//! construction. Conv1D weights stay `[in, out]` as HF stores them (`WeightLayout::InOut`): the
//! four of them are c_attn, attn.c_proj, c_fc and mlp.c_proj.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::{append_kv, check_ids, linear, KvCache, LanguageModel, LayerCache, ModelConfig};
use crate::ops::{
    gelu_new, packed_self_attention, scaled_dot_product_attention, AttentionMask, Embedding,
    Greedy, LayerNorm, Linear, WeightLayout,
};

fn layer_norm(vb: VarBuilder, d: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(d, "weight")?,
        vb.get(d, "bias")?,
        eps,
    ))
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            c_attn: linear(vb.pp("c_attn"), d, 3 * d, true, WeightLayout::InOut)?,
            c_proj: linear(vb.pp("c_proj"), d, d, true, WeightLayout::InOut)?,
            n_head: cfg.num_heads,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        cache: Option<LayerCache<'_>>,
        offset: usize,
    ) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let dh = d / self.n_head;
        let qkv = self.c_attn.forward(x)?; // [B, L, 3D], split q | k | v
        if cache.is_none() {
            // No cache: one op reads the heads in place (fused on CPU).
            let bias = mask.bias(l, l, offset, qkv.dtype(), qkv.device())?;
            let y = packed_self_attention(&qkv, self.n_head, bias.as_ref())?; // [B, L, D]
            return self.c_proj.forward(&y);
        }
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape((b, l, self.n_head, dh))?
                .transpose(1, 2)?
                .contiguous() // [B, H, L, Dh]
        };
        let q = heads(0)?;
        let (k, v) = append_kv(cache, heads(1)?, heads(2)?)?;
        let bias = mask.bias(l, k.dim(2)?, offset, q.dtype(), q.device())?;
        let y = scaled_dot_product_attention(&q, &k, &v, bias.as_ref())?;
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
        let (d, eps) = (cfg.hidden_size, cfg.norm_eps);
        Ok(Self {
            ln_1: layer_norm(vb.pp("ln_1"), d, eps)?,
            attn: Attention::load(vb.pp("attn"), cfg)?,
            ln_2: layer_norm(vb.pp("ln_2"), d, eps)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        cache: Option<LayerCache<'_>>,
        offset: usize,
    ) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x)?, mask, cache, offset)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

pub struct Gpt2 {
    config: ModelConfig,
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Gpt2 {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let t = vb.pp("transformer");
        let d = cfg.hidden_size;
        let wte = t.get((cfg.vocab_size, d), "wte.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            wte.clone()
        } else {
            vb.get((cfg.vocab_size, d), "lm_head.weight")?
        };
        Ok(Self {
            config: cfg.clone(),
            wte: Embedding::new(wte),
            wpe: Embedding::new(t.get((cfg.max_position_embeddings, d), "wpe.weight")?),
            h: (0..cfg.num_layers)
                .map(|i| Block::load(t.pp(format!("h.{i}")), cfg))
                .collect::<Result<_>>()?,
            ln_f: layer_norm(t.pp("ln_f"), d, cfg.norm_eps)?,
            lm_head: Linear::new(lm_head, None, WeightLayout::OutIn),
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
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        check_ids(ids, self.config.vocab_size)?;
        let (_b, l) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.offset());
        if offset + l > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} positions exceeds GPT-2's {} learned positions",
                offset + l,
                self.config.max_position_embeddings
            );
        }
        let positions = self.wpe.weight.narrow(0, offset, l)?; // [L, D]
        let mut x = self.wte.forward(ids)?.broadcast_add(&positions)?;
        for (i, block) in self.h.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| c.layer(i));
            x = block.forward(&x, mask, layer_cache, offset)?;
        }
        if let Some(c) = cache {
            c.advance(l);
        }
        self.ln_f.forward(&x)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    fn head_greedy(&self, hidden: &Tensor) -> Result<Vec<Greedy>> {
        self.lm_head.greedy_rows(hidden)
    }
}
