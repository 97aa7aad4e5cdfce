//! The MPI communicator (the `mpi` feature): rsmpi over the system's MPI library (OpenMPI on
//! Debian). Host buffers only; GPU tensors are staged through the host by the caller.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _};
use mpi::Threading;

use super::{check_blocks, Communicator};
use crate::error::{Error, Result};

/// MPI counts are C ints: all-reduces go in chunks of at most this many elements.
const MAX_COUNT: usize = 1 << 30;

pub struct Mpi {
    // Declared before the universe so that it is dropped before MPI_Finalize runs.
    world: SimpleCommunicator,
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI. Only the thread that calls this calls MPI afterwards: candle's worker
    /// threads never do, nor do the helper threads of the gradient pipeline
    /// (`train::distributed::all_reduce_grads`), so MPI_THREAD_FUNNELED is the level needed.
    pub fn init() -> Result<Self> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Distributed("MPI was already initialised".into()))?;
        if provided == Threading::Single {
            // dlm always runs several threads (rayon's), which MPI_THREAD_SINGLE forbids.
            return Err(Error::Distributed(
                "this MPI library offers no thread support (MPI_THREAD_FUNNELED is needed)".into(),
            ));
        }
        Ok(Self {
            world: universe.world(),
            _universe: universe,
        })
    }
}

fn fits(op: &str, n: usize) -> Result<()> {
    if n > MAX_COUNT {
        return Err(Error::Distributed(format!(
            "{op}: {n} elements exceed MPI's count limit; use more ranks"
        )));
    }
    Ok(())
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        fits("all-reduce", buf.len())?;
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.world_size())?;
        fits("reduce-scatter", send.len())?;
        self.world
            .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), self.world_size())?;
        fits("all-gather", recv.len())?;
        self.world.all_gather_into(send, recv);
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
