//! `--cache prefix|dual` (approximate, as Fast-dLLM): keys and values computed by a full forward
//! when a block starts are reused while the block is denoised, so later steps run only a window
//! of the canvas. Exact attention would recompute every position every step, because under
//! bidirectional attention each position's keys depend on the tokens committed since; the
//! quality cost of skipping that is measured by `dlm bench sample`.

use candle_core::Tensor;
use serde::Deserialize;

use crate::model::{KvCache, LanguageModel};
use crate::named::{display_and_from_str, Named};
use crate::ops::team::with_team_if_small;
use crate::ops::AttentionMask;

/// Which positions a denoising step recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    #[default]
    None,
    Prefix,
    /// Right of the block everything is still masked, so its keys change least.
    Dual,
}

impl Named for CacheMode {
    const WHAT: &'static str = "cache mode";
    const ALL: &'static [Self] = &[Self::None, Self::Prefix, Self::Dual];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Prefix => "prefix",
            Self::Dual => "dual",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::None => "Every position, every step (exact)",
            Self::Prefix => {
                "The current block and everything right of it; the decided prefix comes from the \
                 cache"
            }
            Self::Dual => {
                "The current block only; positions left and right of it come from the cache \
                 (Fast-dLLM's dual cache)"
            }
        }
    }
}
display_and_from_str!(CacheMode);

/// The cached keys and values of one batch of canvases, from the full forward that began the
/// current window.
pub struct StepCache {
    kv: KvCache,
    window: (usize, usize),
    batch: Vec<usize>,
}

impl StepCache {
    /// Hidden states of positions `window.0..window.1` of `ids` [B, L], and where they start. A
    /// new window or batch refreshes the cache with a full (exact) forward, whose hidden states
    /// are returned whole (starting at 0); so does a window that is the whole canvas.
    pub fn forward(
        slot: &mut Option<Self>,
        model: &dyn LanguageModel,
        ids: &Tensor,
        batch: &[usize],
        window: (usize, usize),
    ) -> candle_core::Result<(Tensor, usize)> {
        let l = ids.dim(1)?;
        let (start, end) = (window.0, window.1.min(l));
        if start == 0 && end == l {
            *slot = None;
            return Ok((model.hidden(ids, &AttentionMask::Bidirectional, None)?, 0));
        }
        if let Some(c) = slot
            .as_mut()
            .filter(|c| c.window == (start, end) && c.batch == batch)
        {
            let ids = ids.narrow(1, start, end - start)?;
            // A window of a few dozen rows: some 200 small products, which a spinning team
            // shares without a wake-up each.
            let hidden = with_team_if_small(ids.device(), ids.elem_count(), || {
                model.hidden(&ids, &AttentionMask::Bidirectional, Some(&mut c.kv))
            })?;
            return Ok((hidden, start));
        }
        let mut kv = KvCache::new(model.config().num_layers);
        let hidden = model.hidden(ids, &AttentionMask::Bidirectional, Some(&mut kv))?;
        kv.splice_at(start);
        *slot = Some(Self {
            kv,
            window: (start, end),
            batch: batch.to_vec(),
        });
        Ok((hidden, 0))
    }
}
