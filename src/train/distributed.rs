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

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use super::adamw::{global_grad_norm, AdamW, AdamWConfig};
use super::zero::ShardedAdamW;
use crate::dist::Communicator;
use crate::error::{Error, Result};

/// Elements per all-reduce bucket (64 MiB of f32): large enough to amortise each collective's
/// latency, small enough to bound the extra host copy.
const BUCKET_ELEMS: usize = 16 << 20;

/// Sums every rank's gradients in place, bucket by bucket in parameter order. One rank: nothing.
pub fn all_reduce_grads(comm: &dyn Communicator, grads: &mut [(String, Tensor)]) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let mut start = 0;
    while start < grads.len() {
        // Consecutive tensors up to the bucket size; at least one.
        let (mut end, mut n) = (start, 0);
        while end < grads.len() && (end == start || n + grads[end].1.elem_count() <= BUCKET_ELEMS) {
            n += grads[end].1.elem_count();
            end += 1;
        }
        let mut flat = Vec::with_capacity(n);
        for (_, g) in &grads[start..end] {
            flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        comm.all_reduce_sum(&mut flat)?;
        let mut offset = 0;
        for (_, g) in &mut grads[start..end] {
            let k = g.elem_count();
            *g = Tensor::from_slice(&flat[offset..offset + k], g.shape(), g.device())?;
            offset += k;
        }
        start = end;
    }
    Ok(())
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
    pub fn reduce(
        &self,
        comm: &dyn Communicator,
        mut grads: Vec<(String, Tensor)>,
    ) -> Result<(Reduced, f64)> {
        match self {
            Self::Replicated(_) => {
                all_reduce_grads(comm, &mut grads)?;
                let norm = global_grad_norm(&grads)?;
                Ok((Reduced::Full(grads), norm))
            }
            Self::Sharded(z) => {
                let (slice, norm) = z.reduce(comm, &grads)?;
                Ok((Reduced::Slice(slice), norm))
            }
        }
    }

    /// One AdamW step at `lr` with gradients multiplied by `scale` (the clipping coefficient).
    pub fn step(
        &mut self,
        comm: &dyn Communicator,
        vars: &BTreeMap<String, Var>,
        grads: Reduced,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        match (self, grads) {
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
