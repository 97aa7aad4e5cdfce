//! What a forward pass carries through a stack of blocks: the attention mask, the absolute
//! position of its first id, and the caller's key/value cache, which it reads and extends.

use candle_core::{DType, Result, Tensor};

use crate::ops::AttentionMask;

/// Key/value states per layer. The caller owns it. By default the model appends each forward's
/// keys and values (incremental decoding); after `splice_at` a forward over a window of the
/// cached sequence overwrites the window's positions and attends to the whole of it.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<KvBuffers>>,
    len: usize,
    splice: Option<usize>,
    /// Positions each layer's buffers make room for when the first forward fills them.
    reserve: usize,
}

/// The most bytes a cache's reservation (`KvCache::with_capacity`) sets aside for one layer's
/// keys (and as many for its values); past it the buffers grow as they fill.
const RESERVE_BYTES: usize = 16 << 20;

/// One layer's keys and values, [B, K, capacity, Dh] each: the first `len` positions are
/// cached, the rest is room that later forwards fill in place. A decoding step so copies its own
/// keys and values only (concatenating copied the whole cache at every step).
#[derive(Debug)]
struct KvBuffers {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvBuffers {
    /// `old`'s positions followed by k and v [B, K, n, Dh]: written into `old`'s room when it
    /// has enough, else into new buffers with room for `reserve` positions or half as many
    /// again as needed, whichever is more (so appends copy the cache O(log L) times in all). A
    /// first forward's keys and values are kept as they are when no more room is asked for.
    fn append(old: Option<Self>, k: &Tensor, v: &Tensor, reserve: usize) -> Result<Self> {
        let n = k.dim(2)?;
        // A reservation holds at most RESERVE_BYTES a buffer: a 7B model's 4096 positions would
        // be 4 GB of f32 keys and values set aside for a generation that may stop early.
        let per_position = k.elem_count() / n.max(1) * k.dtype().size_in_bytes();
        let reserve = reserve.min(RESERVE_BYTES / per_position.max(1));
        let old = match old {
            Some(old) => old,
            // Exactly full: the first append moves them (they may share storage with the
            // caller's tensors, which nothing then writes into).
            None if reserve <= n => {
                let (k, v) = (k.contiguous()?, v.contiguous()?);
                return Ok(Self { k, v, len: n });
            }
            None => Self::room(k, v, reserve, 0)?,
        };
        let (len, need) = (old.len, old.len + n);
        let mut buffers = match old.k.dim(2)? >= need {
            true => old,
            false => {
                let new = Self::room(k, v, reserve.max(need + (need / 2).max(64)), len)?;
                let (cached_k, cached_v) = old.valid()?;
                new.k.slice_set(&cached_k.contiguous()?, 2, 0)?;
                new.v.slice_set(&cached_v.contiguous()?, 2, 0)?;
                new
            }
        };
        buffers.k.slice_set(&k.contiguous()?, 2, len)?;
        buffers.v.slice_set(&v.contiguous()?, 2, len)?;
        buffers.len = need;
        Ok(buffers)
    }

    /// Empty buffers of `capacity` positions shaped as k and v, `len` of them counted as
    /// cached (the caller fills them).
    fn room(k: &Tensor, v: &Tensor, capacity: usize, len: usize) -> Result<Self> {
        let room = |t: &Tensor| -> Result<Tensor> {
            let (b, h, _, dh) = t.dims4()?;
            Tensor::zeros((b, h, capacity, dh), t.dtype(), t.device())
        };
        Ok(Self {
            k: room(k)?,
            v: room(v)?,
            len,
        })
    }

    /// k and v [B, K, n, Dh] in place of positions `start..start + n`.
    fn overwrite(&mut self, start: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let n = k.dim(2)?;
        if start + n > self.len {
            candle_core::bail!(
                "a window of {n} positions at {start} runs past the {} cached ones",
                self.len
            );
        }
        self.k.slice_set(&k.contiguous()?, 2, start)?;
        self.v.slice_set(&v.contiguous()?, 2, start)
    }

    /// The cached positions, as views into the buffers.
    fn valid(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }
}

/// One layer's view of a cache during a forward.
struct LayerCache<'a> {
    kv: &'a mut Option<KvBuffers>,
    splice: Option<usize>,
    reserve: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache whose layers make room for `positions` at once (decoding to a known length), up
    /// to 16 MB a buffer (`RESERVE_BYTES`): growing it as it filled copied every layer's keys
    /// and values into freshly zeroed pages, ~3% of a decoded SmolLM2 token (Q4_0, 128 tokens).
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            splice: None,
            reserve: positions,
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
    /// fresh keys and values replace the cached ones at those positions (in place: the cache
    /// then holds the latest window's), every other position is served from the cache and never
    /// changed (Fast-dLLM's reuse of keys and values across denoising steps, whose every step
    /// recomputes the same window). Bidirectional attention only.
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
            reserve: self.reserve,
        }
    }

    fn advance(&mut self, n: usize) {
        if self.splice.is_none() {
            self.len += n;
        }
    }
}

/// One forward pass through a stack of blocks: its attention mask, the absolute position of its
/// first id, and the cache it reads and extends.
pub(super) struct Pass<'a> {
    mask: &'a AttentionMask,
    offset: usize,
    cache: Option<&'a mut KvCache>,
}

impl<'a> Pass<'a> {
    /// The absolute position of the first id.
    pub(super) fn offset(&self) -> usize {
        self.offset
    }

    /// Refuses out-of-vocabulary ids (they would index past the embedding table) and places the
    /// ids after the cached positions.
    pub(super) fn start(
        ids: &Tensor,
        vocab: usize,
        mask: &'a AttentionMask,
        cache: Option<&'a mut KvCache>,
    ) -> Result<Self> {
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
    pub(super) fn through<B>(
        mut self,
        blocks: &[B],
        mut x: Tensor,
        forward: impl Fn(&B, &Tensor, LayerPass<'_>) -> Result<Tensor> + Sync,
    ) -> Result<Tensor>
    where
        B: Sync,
    {
        let l = x.dim(1)?;
        let on_cpu = x.device().is_cpu();
        let stack = || -> Result<Tensor> {
            for (i, block) in blocks.iter().enumerate() {
                let layer = LayerPass {
                    mask: self.mask,
                    offset: self.offset,
                    cache: self.cache.as_mut().map(|c| c.layer(i)),
                };
                x = forward(block, &x, layer)?;
            }
            Ok(x)
        };
        // On the CPU the whole stack runs on one worker of the pool, so its ops fork without a
        // cross-thread hand-off each (`cpu::on_pool`); a GPU stream stays on its own thread.
        let x = match on_cpu {
            true => crate::ops::cpu::on_pool(stack)?,
            false => stack()?,
        };
        if let Some(c) = self.cache {
            c.advance(l);
        }
        Ok(x)
    }
}

/// One block's view of a forward pass: the mask, the absolute position of the first id, and the
/// block's keys and values in the cache, when there is one.
pub(super) struct LayerPass<'a> {
    mask: &'a AttentionMask,
    offset: usize,
    cache: Option<LayerCache<'a>>,
}

impl LayerPass<'_> {
    /// The absolute position of the first id.
    pub(super) fn offset(&self) -> usize {
        self.offset
    }

    pub(super) fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The additive bias between `lq` queries and `lk` keys, in `like`'s dtype and device; None
    /// when the mask blocks nothing.
    pub(super) fn bias(&self, lq: usize, lk: usize, like: &Tensor) -> Result<Option<Tensor>> {
        self.mask
            .bias(lq, lk, self.offset, like.dtype(), like.device())
    }

    /// Records this forward's keys and values [B, K, L, Dh] in the cache (when there is one) and
    /// returns the keys and values attention should see: the cached ones followed by these, or
    /// with these at the cache's splice position.
    pub(super) fn append_kv(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok((k, v));
        };
        let (k, v) = match (cache.kv.as_mut(), cache.splice) {
            (Some(buffers), Some(start)) => {
                buffers.overwrite(start, &k, &v)?;
                buffers.valid()?
            }
            // Appended after the cached positions (a spliced forward into an empty cache stores
            // its keys and values as the cache, as an appending one does).
            _ => {
                let buffers = KvBuffers::append(cache.kv.take(), &k, &v, cache.reserve)?;
                let views = buffers.valid()?;
                *cache.kv = Some(buffers);
                views
            }
        };
        // The views are read in place on the CPU (fused attention); other devices' kernels get
        // contiguous copies.
        match k.device().is_cpu() {
            true => Ok((k, v)),
            false => Ok((k.contiguous()?, v.contiguous()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Appends of 1 to 5 positions, through several growths (or none, with room reserved for
    /// all of them; or some, with too little), hold exactly what concatenating every append
    /// gives.
    #[test]
    fn appends_hold_what_concatenation_gives() -> Result<()> {
        for reserve in [0, 100, 240] {
            appends_match_concatenation(reserve)?;
        }
        Ok(())
    }

    /// A reservation larger than RESERVE_BYTES a buffer is cut to it.
    #[test]
    fn reservations_stop_at_their_byte_budget() -> Result<()> {
        let dev = Device::Cpu;
        // 1 MB a position: room for 16 of the 100 asked for.
        let k = Tensor::zeros((1, 1, 3, 1 << 18), DType::F32, &dev)?;
        let buffers = KvBuffers::append(None, &k, &k, 100)?;
        assert_eq!(buffers.k.dim(2)?, RESERVE_BYTES >> 20);
        assert_eq!(buffers.len, 3);
        Ok(())
    }

    fn appends_match_concatenation(reserve: usize) -> Result<()> {
        let dev = Device::Cpu;
        let (mut buffers, mut ks, mut vs) = (None, vec![], vec![]);
        for step in 0..80 {
            let n = 1 + step % 5;
            let k = Tensor::randn(0f32, 1.0, (2, 3, n, 4), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (2, 3, n, 4), &dev)?;
            buffers = Some(KvBuffers::append(buffers, &k, &v, reserve)?);
            ks.push(k);
            vs.push(v);
        }
        let buffers = buffers.expect("appended");
        if reserve >= 240 {
            assert_eq!(
                buffers.k.dim(2)?,
                reserve,
                "room for every append from the first"
            );
        }
        let (k, v) = buffers.valid()?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert_eq!(k.dims(), &[2, 3, 240, 4]);
        assert_eq!(diff(&k, &Tensor::cat(&ks, 2)?)?, 0.0);
        assert_eq!(diff(&v, &Tensor::cat(&vs, 2)?)?, 0.0);
        Ok(())
    }
}
