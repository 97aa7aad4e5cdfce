//! Architectures and their weights. A model maps token ids and an attention mask to hidden states
//! and logits; it knows nothing of noise, losses, sampling or training.

pub mod config;
pub mod gguf;
pub mod gpt2;
pub mod llama;
pub mod mask_token;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Architecture, ModelConfig};
pub use weights::Weights;

use crate::error::{Error, Result};
use crate::ops::{AttentionMask, Greedy, Linear, WeightLayout};

/// Key/value states per layer. The caller owns it. By default the model appends each forward's
/// keys and values (incremental decoding); after `splice_at` it leaves the cache as it is and lets
/// a forward over a window of the cached sequence attend to the whole of it.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    splice: Option<usize>,
}

/// One layer's view of a cache during a forward.
struct LayerCache<'a> {
    kv: &'a mut Option<(Tensor, Tensor)>,
    splice: Option<usize>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            splice: None,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Later forwards take ids for positions `start..start + n` of the cached sequence: their
    /// fresh keys and values stand in for the cached ones at those positions, every other
    /// position is served from the cache, and the cache is not changed (Fast-dLLM's reuse of
    /// keys and values across denoising steps). Bidirectional attention only.
    pub fn splice_at(&mut self, start: usize) {
        self.splice = Some(start);
    }

    /// The position of the first id of the next forward.
    fn offset(&self) -> usize {
        self.splice.unwrap_or(self.len)
    }

    fn layer(&mut self, i: usize) -> LayerCache<'_> {
        LayerCache {
            kv: &mut self.layers[i],
            splice: self.splice,
        }
    }

    fn advance(&mut self, n: usize) {
        if self.splice.is_none() {
            self.len += n;
        }
    }
}

/// A transformer language model: ids [B, L] → hidden [B, L, D] → logits [B, L, V].
pub trait LanguageModel: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Final-norm hidden states for every position. With a cache, `ids` continue the cached
    /// sequence and their keys/values are appended to it.
    fn hidden(
        &self,
        ids: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor>;

    /// The LM head, [V, D].
    fn lm_head(&self) -> &Linear;

    /// The LM head applied to hidden rows [..., D] → [..., V]; callers pass only the rows they need.
    fn head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head().forward(hidden)
    }

    /// The greedy choice (first maximum and its log-probability) of the head at each hidden row
    /// [..., D], without keeping the logits when the head's kernel allows.
    fn head_greedy(&self, hidden: &Tensor) -> candle_core::Result<Vec<Greedy>> {
        self.lm_head().greedy_rows(hidden)
    }

    /// Logits at every position.
    fn forward(&self, ids: &Tensor, mask: &AttentionMask) -> candle_core::Result<Tensor> {
        self.head(&self.hidden(ids, mask, None)?)
    }

    /// Logits [n, V] of selected positions only: `rows` indexes the flattened [B·L] positions.
    /// The head is the largest matmul of a small model; most callers need a fraction of rows.
    fn logits_rows(
        &self,
        ids: &Tensor,
        mask: &AttentionMask,
        rows: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden(ids, mask, None)?;
        let (b, l, d) = hidden.dims3()?;
        self.head(&hidden.reshape((b * l, d))?.index_select(rows, 0)?)
    }
}

/// Equal-length token rows as the model's [B, L] u32 input.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
    let l = rows.first().map_or(0, |r| r.len());
    if rows.iter().any(|r| r.len() != l) {
        candle_core::bail!("sequences of different lengths in one batch");
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), l), device)
}

/// One forward pass through a stack of blocks: its attention mask, the absolute position of its
/// first id, and the cache it reads and extends.
struct Pass<'a> {
    mask: &'a AttentionMask,
    offset: usize,
    cache: Option<&'a mut KvCache>,
}

impl<'a> Pass<'a> {
    /// Refuses out-of-vocabulary ids (they would index past the embedding table) and places the
    /// ids after the cached positions.
    fn start(
        ids: &Tensor,
        vocab: usize,
        mask: &'a AttentionMask,
        cache: Option<&'a mut KvCache>,
    ) -> candle_core::Result<Self> {
        let max = ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max as usize >= vocab {
            candle_core::bail!("token id {max} is out of vocabulary (size {vocab})");
        }
        let offset = cache.as_ref().map_or(0, |c| c.offset());
        Ok(Self {
            mask,
            offset,
            cache,
        })
    }

    /// x [B, L, D] through `blocks` in order, each given its layer of the pass; the cache then
    /// moves past these L positions.
    fn through<B>(
        mut self,
        blocks: &[B],
        mut x: Tensor,
        forward: impl Fn(&B, &Tensor, LayerPass<'_>) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let l = x.dim(1)?;
        for (i, block) in blocks.iter().enumerate() {
            let layer = LayerPass {
                mask: self.mask,
                offset: self.offset,
                cache: self.cache.as_mut().map(|c| c.layer(i)),
            };
            x = forward(block, &x, layer)?;
        }
        if let Some(c) = self.cache {
            c.advance(l);
        }
        Ok(x)
    }
}

/// One block's view of a forward pass: the mask, the absolute position of the first id, and the
/// block's keys and values in the cache, when there is one.
struct LayerPass<'a> {
    mask: &'a AttentionMask,
    offset: usize,
    cache: Option<LayerCache<'a>>,
}

impl LayerPass<'_> {
    fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The additive bias between `lq` queries and `lk` keys, in `like`'s dtype and device; None
    /// when the mask blocks nothing.
    fn bias(&self, lq: usize, lk: usize, like: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.mask
            .bias(lq, lk, self.offset, like.dtype(), like.device())
    }

    /// Records this forward's keys and values [B, K, L, Dh] in the cache (when there is one) and
    /// returns the keys and values attention should see: appended to the cached ones, or spliced
    /// into them at the cache's splice position.
    fn append_kv(&mut self, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok((k, v));
        };
        let (k, v) = match (cache.kv.as_ref(), cache.splice) {
            (Some((ck, cv)), Some(start)) => {
                return Ok((splice(ck, &k, start)?, splice(cv, &v, start)?))
            }
            (Some((ck, cv)), None) => (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?),
            (None, _) => (k, v),
        };
        *cache.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// `cached` [B, K, L, Dh] with positions `start..start + n` replaced by `fresh` [B, K, n, Dh].
fn splice(cached: &Tensor, fresh: &Tensor, start: usize) -> candle_core::Result<Tensor> {
    let (l, n) = (cached.dim(2)?, fresh.dim(2)?);
    if start + n > l {
        candle_core::bail!("a window of {n} positions at {start} runs past the {l} cached ones");
    }
    let before = cached.narrow(2, 0, start)?;
    let after = cached.narrow(2, start + n, l - start - n)?;
    let parts: Vec<&Tensor> = [&before, fresh, &after]
        .into_iter()
        .filter(|t| t.dim(2).is_ok_and(|d| d > 0))
        .collect();
    Tensor::cat(&parts, 2)
}

fn linear(
    vb: VarBuilder,
    d_in: usize,
    d_out: usize,
    bias: bool,
    layout: WeightLayout,
) -> candle_core::Result<Linear> {
    let weight = vb.get(layout.shape(d_in, d_out), "weight")?;
    let bias = if bias {
        Some(vb.get(d_out, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias, layout))
}

/// The LM head: the token embedding when the two are tied, else `lm_head.weight`.
fn lm_head(vb: &VarBuilder, cfg: &ModelConfig, embedding: &Tensor) -> candle_core::Result<Linear> {
    let weight = match cfg.tie_word_embeddings {
        true => embedding.clone(),
        false => vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?,
    };
    Ok(Linear::new(weight, None, WeightLayout::OutIn))
}

/// Builds the architecture the config names from a VarBuilder (checkpoint or fresh variables).
pub fn build(config: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Box<dyn LanguageModel>> {
    Ok(match config.arch {
        Architecture::Gpt2 => Box::new(gpt2::Gpt2::load(vb, config)?),
        Architecture::Llama => Box::new(llama::Llama::load(vb, config)?),
    })
}

/// A model directory in HF layout, loaded: config, weights by HF name, and the built model.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: Weights,
    pub model: Box<dyn LanguageModel>,
}

/// Loads `dir/config.json` and its safetensors (single file, sharded, or the DiffuGPT layout)
/// into `dtype` on `device`.
pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = Weights::load_dir(dir, config.arch, dtype, device)?;
    if config.mask_token_id.is_none() {
        config.mask_token_id = mask_token::known_mask_id(&config);
    }
    let model = build(&config, weights.var_builder(dtype, device))
        .map_err(|e| Error::checkpoint(weights.source(), e))?;
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        weights,
        model,
    })
}
