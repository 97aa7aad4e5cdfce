//! Data parallelism over a [`Communicator`]: every rank computes gradients on its rows of the
//! global micro-batch, and the update combines them. Two ways:
//!
//! - replicated (DDP): gradients are summed over ranks with bucketed all-reduces, and every rank
//!   applies the same AdamW step to its full copy of the moments;
//! - sharded (ZeRO-1, `--zero 1`): see [`super::zero`].
//!
//! Gradients are summed, not averaged, because each rank's loss is already divided by the target
//! count of the whole global micro-batch (see `trainer`). candle's backward pass returns all
//! gradients at once, with no per-parameter hook, so communication starts after it rather than
//! overlapping it; under gradient accumulation it runs once per optimizer step, not per micro-batch.
//! What does overlap is the rest of the update: while bucket k is all-reduced, a helper thread
//! copies bucket k+1 to the host and another takes bucket k−1 on (its norm terms and, when the
//! update needs no global norm, its AdamW step; see [`all_reduce_grads`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::mpsc::sync_channel;

use candle_core::{DType, Tensor, Var};

use super::adamw::{add_grad_squares, AdamW, AdamWConfig};
use super::zero::ShardedAdamW;
use crate::dist::Communicator;
use crate::error::{Error, Result};

/// Elements per all-reduce bucket (64 MiB of f32): large enough to amortise each collective's
/// latency, small enough to bound the extra host copy.
const BUCKET_ELEMS: usize = 16 << 20;

/// Consecutive runs of gradients of at most `max_elems` elements (at least one tensor each).
fn buckets(grads: &[(String, Tensor)], max_elems: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < grads.len() {
        let (mut end, mut n) = (start, 0);
        while end < grads.len() && (end == start || n + grads[end].1.elem_count() <= max_elems) {
            n += grads[end].1.elem_count();
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// A bucket's gradients as one host f32 vector.
fn stage(grads: &[(String, Tensor)]) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(grads.iter().map(|(_, g)| g.elem_count()).sum());
    for (_, g) in grads {
        flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    Ok(flat)
}

/// The tensors of a bucket (shapes, devices and names of `like`) from its flat host values.
fn unstage(flat: &[f32], like: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    let mut offset = 0;
    like.iter()
        .map(|(name, g)| {
            let k = g.elem_count();
            let t = Tensor::from_slice(&flat[offset..offset + k], g.shape(), g.device())?;
            offset += k;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Sums every rank's gradients, bucket by bucket in parameter order, and hands each summed
/// bucket to `done` in order; returns all the summed gradients. One rank: `done` sees them all
/// at once, unchanged.
///
/// Three stages run at once: a helper thread stages bucket k+1 on the host, this thread
/// all-reduces bucket k, and a second helper unstages bucket k−1 and runs `done` on it. Only this
/// thread (the one that initialised MPI) ever calls the communicator, so MPI's FUNNELED thread
/// level holds. Channels of one slot bound the host copies in flight to four buckets. Every
/// bucket and every element is combined exactly as by a loop without threads, so results are
/// bit-identical to it.
pub fn all_reduce_grads<F>(
    comm: &dyn Communicator,
    grads: Vec<(String, Tensor)>,
    done: F,
) -> Result<Vec<(String, Tensor)>>
where
    F: FnMut(&[(String, Tensor)]) -> Result<()> + Send,
{
    all_reduce_in_buckets(comm, grads, BUCKET_ELEMS, done)
}

/// `all_reduce_grads` with buckets of at most `bucket_elems` elements.
fn all_reduce_in_buckets<F>(
    comm: &dyn Communicator,
    grads: Vec<(String, Tensor)>,
    bucket_elems: usize,
    mut done: F,
) -> Result<Vec<(String, Tensor)>>
where
    F: FnMut(&[(String, Tensor)]) -> Result<()> + Send,
{
    if comm.world_size() == 1 {
        done(&grads)?;
        return Ok(grads);
    }
    let ranges = buckets(&grads, bucket_elems);
    let (grads, ranges) = (&grads, &ranges);
    std::thread::scope(|scope| {
        let (to_comm, staged) = sync_channel::<Result<Vec<f32>>>(1);
        let (to_consumer, reduced) = sync_channel::<Vec<f32>>(1);
        scope.spawn(move || {
            for r in ranges {
                let flat = stage(&grads[r.clone()]);
                let failed = flat.is_err();
                // A closed channel means this thread's caller gave up: stop quietly.
                if to_comm.send(flat).is_err() || failed {
                    return;
                }
            }
        });
        let consumer = scope.spawn(move || -> Result<Vec<(String, Tensor)>> {
            let mut out = Vec::with_capacity(grads.len());
            for (r, flat) in ranges.iter().zip(reduced) {
                let start = out.len();
                out.extend(unstage(&flat, &grads[r.clone()])?);
                done(&out[start..])?;
            }
            Ok(out)
        });
        // On an error here the channels close as this closure returns, and both helpers stop.
        for flat in staged {
            let mut flat = flat?;
            comm.all_reduce_sum(&mut flat)?;
            if to_consumer.send(flat).is_err() {
                break; // the consumer failed; its error is returned below
            }
        }
        drop(to_consumer);
        let out = consumer
            .join()
            .map_err(|_| Error::Distributed("the gradient consumer thread panicked".into()))??;
        if out.len() != grads.len() {
            return Err(Error::Distributed(
                "the gradient stager stopped early".into(),
            ));
        }
        Ok(out)
    })
}

pub enum Optimizer {
    /// Every rank holds all AdamW moments (always so for one rank).
    Replicated(AdamW),
    /// ZeRO-1: each rank holds the moments of its slice of the parameters.
    Sharded(ShardedAdamW),
}

/// Gradients combined over the ranks, ready for the update.
pub enum Reduced {
    /// Every parameter's summed gradient.
    Full(Vec<(String, Tensor)>),
    /// The summed gradient of this rank's slice of the flat parameters.
    Slice(Vec<f32>),
    /// Already applied, bucket by bucket as the sums arrived (see `Optimizer::reduce`).
    Applied,
}

impl Optimizer {
    /// ZeRO-1 when `zero` is set, else replicated AdamW.
    pub fn new(
        config: AdamWConfig,
        zero: bool,
        vars: &BTreeMap<String, Var>,
        comm: &dyn Communicator,
    ) -> Self {
        if zero {
            Self::Sharded(ShardedAdamW::new(
                config,
                vars,
                comm.rank(),
                comm.world_size(),
            ))
        } else {
            Self::Replicated(AdamW::new(config))
        }
    }

    /// Combines the ranks' gradients; returns them with the global gradient norm.
    ///
    /// `apply_at`: the learning rate of an update that needs no global quantity (no clipping,
    /// no skipping of non-finite steps). Replicated AdamW then updates each bucket's parameters
    /// while the next bucket is all-reduced, and returns `Reduced::Applied`. With clipping the
    /// update of every parameter waits for the norm of all summed gradients, so only staging
    /// and the norm overlap communication.
    pub fn reduce(
        &mut self,
        comm: &dyn Communicator,
        vars: &BTreeMap<String, Var>,
        grads: Vec<(String, Tensor)>,
        apply_at: Option<f64>,
    ) -> Result<(Reduced, f64)> {
        match self {
            Self::Replicated(adamw) => {
                let mut sq = 0.0f64;
                if let Some(lr) = apply_at {
                    adamw.begin_step();
                    all_reduce_grads(comm, grads, |bucket| {
                        add_grad_squares(&mut sq, bucket)?;
                        adamw.update(vars, bucket, lr, 1.0)
                    })?;
                    return Ok((Reduced::Applied, sq.sqrt()));
                }
                let grads = all_reduce_grads(comm, grads, |b| add_grad_squares(&mut sq, b))?;
                Ok((Reduced::Full(grads), sq.sqrt()))
            }
            Self::Sharded(z) => {
                let (slice, norm) = z.reduce(comm, &grads)?;
                Ok((Reduced::Slice(slice), norm))
            }
        }
    }

    /// One AdamW step at `lr` with gradients multiplied by `scale` (the clipping coefficient);
    /// nothing for gradients already applied.
    pub fn step(
        &mut self,
        comm: &dyn Communicator,
        vars: &BTreeMap<String, Var>,
        grads: Reduced,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        match (self, grads) {
            (_, Reduced::Applied) => Ok(()),
            (Self::Replicated(a), Reduced::Full(g)) => a.step(vars, &g, lr, scale),
            (Self::Sharded(z), Reduced::Slice(g)) => z.step(comm, vars, &g, lr, scale),
            _ => Err(Error::Input(
                "gradients reduced for another optimizer".into(),
            )),
        }
    }

    /// The moments as checkpoint tensors (`m.<param>`, `v.<param>`); with ZeRO-1 a collective
    /// that every rank must join.
    pub fn state_tensors(
        &self,
        comm: &dyn Communicator,
        vars: &BTreeMap<String, Var>,
    ) -> Result<Vec<(String, Tensor)>> {
        match self {
            Self::Replicated(a) => a.state_tensors(vars),
            Self::Sharded(z) => z.gather(comm)?.state_tensors(vars),
        }
    }

    /// Restores moments saved by `state_tensors` (by either kind, under any world size).
    pub fn load_state_tensors(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        match self {
            Self::Replicated(a) => a.load_state_tensors(step, tensors),
            Self::Sharded(z) => {
                let mut full = AdamW::new(AdamWConfig::default());
                full.load_state_tensors(step, tensors)?;
                z.load(&full)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::cell::RefCell;

    /// Two ranks that hold the same gradients: an all-reduce doubles. Records each call's length.
    #[derive(Default)]
    struct TwinRanks {
        calls: RefCell<Vec<usize>>,
        fail_at: Option<usize>,
    }

    impl Communicator for TwinRanks {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            let mut calls = self.calls.borrow_mut();
            if Some(calls.len()) == self.fail_at {
                return Err(Error::Distributed("link down".into()));
            }
            calls.push(buf.len());
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn reduce_scatter_sum(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!("replicated gradients are all-reduced")
        }
        fn all_gather(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            unreachable!("replicated gradients are all-reduced")
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
    }

    fn grads() -> Vec<(String, Tensor)> {
        [("a", 3usize), ("b", 5), ("c", 2), ("d", 4)]
            .iter()
            .map(|&(name, n)| {
                let data: Vec<f32> = (0..n).map(|i| 0.25 * i as f32 - 0.5).collect();
                (
                    name.to_string(),
                    Tensor::from_vec(data, n, &Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn buckets_in_order_hand_each_sum_on_once() {
        let comm = TwinRanks::default();
        let mut seen = Vec::new();
        let out = all_reduce_in_buckets(&comm, grads(), 7, |b| {
            seen.push(b.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
        // 3+5 > 7 starts a new bucket; 5+2 fits; 4 alone.
        assert_eq!(*comm.calls.borrow(), vec![3, 7, 4]);
        assert_eq!(seen, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
        for ((name, got), (_, g)) in out.iter().zip(grads()) {
            let want = (g * 2.0).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.to_vec1::<f32>().unwrap(), want, "{name}");
        }
    }

    #[test]
    fn errors_on_either_side_end_the_pipeline() {
        let comm = TwinRanks {
            fail_at: Some(1),
            ..Default::default()
        };
        let err = all_reduce_in_buckets(&comm, grads(), 7, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("link down"), "{err}");
        let comm = TwinRanks::default();
        let err = all_reduce_in_buckets(&comm, grads(), 7, |b| match b[0].0.as_str() {
            "b" => Err(Error::Input("bad bucket".into())),
            _ => Ok(()),
        })
        .unwrap_err();
        assert!(err.to_string().contains("bad bucket"), "{err}");
    }

    /// Updating each bucket as it arrives (no clipping) equals summing everything, then stepping.
    #[test]
    fn applying_by_bucket_equals_one_step() {
        let vars = |scale: f32| -> BTreeMap<String, Var> {
            grads()
                .into_iter()
                .map(|(n, g)| (n, Var::from_tensor(&(g * scale as f64).unwrap()).unwrap()))
                .collect()
        };
        let (eager, whole) = (vars(1.5), vars(1.5));
        let comm = TwinRanks::default();
        let mut a = Optimizer::Replicated(AdamW::new(AdamWConfig::default()));
        let mut b = Optimizer::Replicated(AdamW::new(AdamWConfig::default()));
        for _ in 0..2 {
            let (r, n1) = a.reduce(&comm, &eager, grads(), Some(1e-2)).unwrap();
            assert!(matches!(r, Reduced::Applied));
            a.step(&comm, &eager, r, 1e-2, 1.0).unwrap();
            let (r, n2) = b.reduce(&comm, &whole, grads(), None).unwrap();
            b.step(&comm, &whole, r, 1e-2, 1.0).unwrap();
            assert_eq!(n1, n2);
        }
        for (name, v) in &eager {
            let (x, y) = (v.as_tensor(), whole[name].as_tensor());
            assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap());
        }
    }
}
