//! Communication between the processes of a data-parallel run: a [`Communicator`] trait with the
//! collectives the trainer needs, [`SingleProcess`] (the identity, always compiled, so a one-rank
//! run computes exactly what it did before this module existed), an MPI implementation behind
//! the `mpi` cargo feature and an NCCL one (GPU ranks) behind `nccl`. `launch` finds the ranks a
//! launcher started, or relaunches dlm under `mpirun`; `rendezvous` hands NCCL's id around.
//!
//! Buffers are host f32 (gradients, parameters, optimizer moments) or f64 (the few scalars of
//! logs and norms). Every rank must call each collective in the same order with the same lengths.

pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(any(feature = "nccl", test))]
mod rendezvous;

use crate::error::{Error, Result};

pub use launch::{connect, launcher_world_size, local_rank, relaunch_under_mpirun};

pub trait Communicator {
    /// This process's index, 0-based; rank 0 writes logs and checkpoints.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;

    /// The same in f64, for loss sums, target counts and squared norms.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;

    /// `send` holds `world_size` equal blocks; rank r receives in `recv` the element-wise sum
    /// over ranks of block r.
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;

    /// Every rank's `send` (all of one length), concatenated in rank order into `recv`.
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;

    /// Ends every rank of the run: after an error on one rank the others would otherwise wait
    /// forever at their next collective.
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), 1)?;
        recv.copy_from_slice(send);
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), 1)?;
        recv.copy_from_slice(send);
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Checks that `whole` is `world` blocks of `block` elements.
fn check_blocks(op: &str, whole: usize, block: usize, world: usize) -> Result<()> {
    if block.checked_mul(world) != Some(whole) {
        return Err(Error::Distributed(format!(
            "{op}: {whole} elements are not {world} blocks of {block}"
        )));
    }
    Ok(())
}

/// The rows of a global micro-batch of `batch` rows that belong to `rank` of `world`: the
/// consecutive block `rank·b .. (rank+1)·b` with b = batch / world.
pub fn shard_rows(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let b = batch / world.max(1);
    rank * b..(rank + 1) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_collectives_are_the_identity() {
        let c = SingleProcess;
        let mut buf = vec![1.0f32, 2.0];
        c.all_reduce_sum(&mut buf).unwrap();
        assert_eq!(buf, vec![1.0, 2.0]);
        let mut out = vec![0.0f32; 2];
        c.reduce_scatter_sum(&buf, &mut out).unwrap();
        assert_eq!(out, buf);
        c.all_gather(&buf, &mut out).unwrap();
        assert_eq!(out, buf);
        assert!(c.all_gather(&buf, &mut [0.0; 3]).is_err());
    }

    #[test]
    fn rows_are_consecutive_blocks() {
        assert_eq!(shard_rows(8, 0, 2), 0..4);
        assert_eq!(shard_rows(8, 1, 2), 4..8);
        assert_eq!(shard_rows(3, 0, 1), 0..3);
    }
}
