//! The NCCL communicator (the `nccl` feature): one GPU per rank, the GPU of the rank's index on
//! its node. Rank 0 creates NCCL's unique id and hands it to the others (see `rendezvous`):
//! through MPI when an MPI launcher started the ranks and dlm has the `mpi` feature, else over
//! TCP, torchrun-style.
//!
//! The [`Communicator`] trait takes host buffers, because the trainer stages gradients on the host
//! for every backend (bucketing, ZeRO's flat slices). So each collective here copies host→device,
//! runs NCCL on the GPU and copies the result back: the simplest correct design. It keeps NCCL's
//! GPU-to-GPU transport (NVLink, InfiniBand) but not the saving of the staging copies, which
//! would need collectives on device buffers.

use std::ffi::c_char;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::result::{NcclError, NcclStatus};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use super::rendezvous::{master_addr, share_over_tcp, share_through};
use super::{check_blocks, Communicator};
use crate::error::{Error, Result};

/// Bytes in NCCL's unique id (`ncclUniqueId`).
const ID_BYTES: usize = 128;

pub struct Nccl {
    // Declared first so that it is destroyed before the stream and the bootstrap communicator.
    comm: Comm,
    stream: Arc<CudaStream>,
    /// The communicator that handed out the id (MPI), kept until NCCL is done.
    _bootstrap: Option<Box<dyn Communicator>>,
}

fn cuda_error(e: impl std::fmt::Debug) -> Error {
    Error::Distributed(format!("CUDA: {e:?}"))
}

fn nccl_error(e: NcclError) -> Error {
    Error::Distributed(format!("NCCL: {:?}", e.0))
}

impl Nccl {
    /// Joins rank `rank` of `world` on GPU `device`. `bootstrap` (MPI) hands out the id when
    /// given; otherwise rank 0 serves it at MASTER_ADDR:MASTER_PORT.
    pub fn init(
        rank: usize,
        world: usize,
        device: usize,
        bootstrap: Option<Box<dyn Communicator>>,
    ) -> Result<Self> {
        let ctx = CudaContext::new(device).map_err(cuda_error)?;
        ctx.bind_to_thread().map_err(cuda_error)?;
        let stream = ctx.new_stream().map_err(cuda_error)?;
        let mine = match rank {
            0 => Some(Id::new().map_err(nccl_error)?),
            _ => None,
        };
        let mine: Option<Vec<u8>> = mine.map(|id| id.internal().iter().map(|&c| c as u8).collect());
        let bytes = match &bootstrap {
            Some(b) => share_through(b.as_ref(), mine.as_deref(), ID_BYTES)?,
            None => {
                let (addr, port) = master_addr()?;
                share_over_tcp(rank, world, (&addr, port), mine.as_deref(), ID_BYTES)?
            }
        };
        let mut internal = [0 as c_char; ID_BYTES];
        for (c, b) in internal.iter_mut().zip(bytes) {
            *c = b as c_char;
        }
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
            .map_err(nccl_error)?;
        Ok(Self {
            comm,
            stream,
            _bootstrap: bootstrap,
        })
    }

    /// Copies `send` to the GPU and runs `op` from it into a fresh device buffer of `len`
    /// elements, which it returns.
    fn run<T>(
        &self,
        send: &[T],
        len: usize,
        op: impl FnOnce(
            &Comm,
            &CudaSlice<T>,
            &mut CudaSlice<T>,
        ) -> std::result::Result<NcclStatus, NcclError>,
    ) -> Result<CudaSlice<T>>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits,
    {
        let src = self.stream.clone_htod(send).map_err(cuda_error)?;
        let mut dst = self.stream.alloc_zeros::<T>(len).map_err(cuda_error)?;
        op(&self.comm, &src, &mut dst).map_err(nccl_error)?;
        Ok(dst)
    }

    /// Copies a result back to the host.
    fn download<T: DeviceRepr>(&self, result: &CudaSlice<T>, out: &mut [T]) -> Result<()> {
        self.stream.memcpy_dtoh(result, out).map_err(cuda_error)?;
        // The copy is asynchronous on the stream: wait before the caller reads `out`.
        self.stream.synchronize().map_err(cuda_error)
    }

    fn all_reduce<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits,
    {
        let sum = self.run(buf, buf.len(), |c, s, r| c.all_reduce(s, r, &ReduceOp::Sum))?;
        self.download(&sum, buf)
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce(buf)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce(buf)
    }

    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.world_size())?;
        let block = self.run(send, recv.len(), |c, s, r| {
            c.reduce_scatter(s, r, &ReduceOp::Sum)
        })?;
        self.download(&block, recv)
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), self.world_size())?;
        let all = self.run(send, recv.len(), |c, s, r| c.all_gather(s, r))?;
        self.download(&all, recv)
    }

    /// Exits this rank; the launcher (torchrun, mpirun, srun) then ends the others, which would
    /// otherwise wait in their next collective.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
