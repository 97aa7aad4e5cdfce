//! `--cache prefix` (approximate, as Fast-dLLM's prefix cache): the keys and values of positions
//! left of every canvas's current block are computed once, by a full forward when the block
//! starts, and reused while the block is denoised; later steps run only the window from the
//! last decided position on. Exact attention would recompute the prefix every step, because under
//! bidirectional attention its keys depend on the tokens committed since; the quality cost of
//! skipping that is measured by `dlm bench sample`.

use candle_core::Tensor;

use crate::model::{KvCache, LanguageModel};
use crate::ops::AttentionMask;

/// The cached prefix of one batch of canvases.
pub struct PrefixCache {
    kv: KvCache,
    /// Cached positions: `0..cut`.
    cut: usize,
    /// The canvases the cache rows belong to, in order.
    batch: Vec<usize>,
}

impl PrefixCache {
    /// Hidden states of positions `offset..L` of `ids` [B, L] and that `offset`. `decided` is the
    /// length of the prefix every canvas has decided (all positions before it are fixed or
    /// committed). The window starts one position earlier than `decided`, as with the shift the
    /// first undecided position reads the row before it. A new `decided` or batch refreshes the
    /// cache with a full (exact) forward.
    pub fn forward(
        slot: &mut Option<Self>,
        model: &dyn LanguageModel,
        ids: &Tensor,
        batch: &[usize],
        decided: usize,
    ) -> candle_core::Result<(Tensor, usize)> {
        let cut = decided.saturating_sub(1);
        if cut == 0 {
            *slot = None;
            let hidden = model.hidden(ids, &AttentionMask::Bidirectional, None)?;
            return Ok((hidden, 0));
        }
        if let Some(c) = slot.as_ref().filter(|c| c.cut == cut && c.batch == batch) {
            let l = ids.dim(1)?;
            let mut kv = c.kv.clone();
            let window = ids.narrow(1, cut, l - cut)?;
            let hidden = model.hidden(&window, &AttentionMask::Bidirectional, Some(&mut kv))?;
            return Ok((hidden, cut));
        }
        let mut kv = KvCache::new(model.config().num_layers);
        let hidden = model.hidden(ids, &AttentionMask::Bidirectional, Some(&mut kv))?;
        kv.truncate(cut)?;
        *slot = Some(Self {
            kv,
            cut,
            batch: batch.to_vec(),
        });
        Ok((hidden, 0))
    }
}
