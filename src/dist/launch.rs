//! Finding the ranks of a run. Under a launcher (OpenMPI's `mpirun`, MPICH's Hydra, Slurm's
//! `srun --mpi=pmi2`, or torchrun for NCCL) the world size comes from its environment;
//! `--world-size N` outside one relaunches this very command under `mpirun -np N`.

use std::process::Command;

use super::{Communicator, SingleProcess};
use crate::error::{Error, OptionMessage, Result};

/// Environment variables in which launchers publish the world size and the rank within a node:
/// OpenMPI's mpirun, MPICH's Hydra (and PMI-2), `srun` (set only inside a job step) and, for
/// the local rank, torchrun.
const MPI_WORLD_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];
/// torchrun's (torch.distributed's) variables, read after the MPI launchers': ranks that only
/// these describe have no MPI and talk over NCCL.
const TORCHRUN_WORLD_SIZE: &str = "WORLD_SIZE";
const LOCAL_RANK_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
    "LOCAL_RANK",
];

fn env_number(vars: &[&str]) -> Option<usize> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether an MPI launcher started this process.
fn under_mpi_launcher() -> bool {
    env_number(&MPI_WORLD_SIZE_VARS).is_some()
}

/// The world size a launcher started this process with; None outside a launcher.
pub fn launcher_world_size() -> Option<usize> {
    env_number(&MPI_WORLD_SIZE_VARS).or_else(|| env_number(&[TORCHRUN_WORLD_SIZE]))
}

/// This process's index among the ranks on its node (0 outside a launcher): which GPU it takes.
pub fn local_rank() -> usize {
    env_number(&LOCAL_RANK_VARS).unwrap_or(0)
}

/// The communicator of this process. `requested` is `--world-size`, which must agree with the
/// launcher's when there is one. One rank gets [`SingleProcess`] even under a launcher. Ranks
/// that train on GPUs (`gpu`) use NCCL in a build with the `nccl` feature, any others MPI.
pub fn connect(requested: Option<usize>, gpu: bool) -> Result<Box<dyn Communicator>> {
    if requested == Some(0) {
        return Err(Error::option("world_size", "must be at least 1"));
    }
    let world = match (launcher_world_size(), requested) {
        (Some(n), Some(r)) if n != r => {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .text("distributed: ")
                    .setting("world_size")
                    .text(format!(" {r} but the launcher started {n} ranks; drop "))
                    .setting("world_size")
                    .text(" under a launcher"),
            ))
        }
        (Some(n), _) => n,
        (None, Some(r)) if r > 1 => {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .text("distributed: ")
                    .setting("world_size")
                    .text(format!(
                        " {r} needs a launcher (dlm relaunches itself under mpirun from the command line)"
                    )),
            ))
        }
        (None, _) => 1,
    };
    if world == 1 {
        return Ok(Box::new(SingleProcess));
    }
    if gpu && cfg!(feature = "nccl") {
        return nccl_communicator(world);
    }
    if !under_mpi_launcher() {
        return Err(Error::Distributed(format!(
            "{TORCHRUN_WORLD_SIZE}={world} without an MPI launcher (torchrun-style) needs NCCL: a \
             dlm built with the `nccl` feature, training with --device cuda"
        )));
    }
    mpi_communicator(world)
}

/// NCCL on the GPU of this rank's local index. Under an MPI launcher in a build with the `mpi`
/// feature MPI hands out NCCL's id; otherwise rank 0 serves it at MASTER_ADDR:MASTER_PORT.
#[cfg(feature = "nccl")]
fn nccl_communicator(world: usize) -> Result<Box<dyn Communicator>> {
    use super::nccl::Nccl;
    const RANK_VARS: [&str; 4] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "RANK"];
    if cfg!(feature = "mpi") && under_mpi_launcher() {
        let mpi = mpi_communicator(world)?;
        let rank = mpi.rank();
        return Ok(Box::new(Nccl::init(rank, world, local_rank(), Some(mpi))?));
    }
    let rank = env_number(&RANK_VARS).ok_or_else(|| {
        Error::Distributed(format!(
            "the launcher set no rank ({})",
            RANK_VARS.join(", ")
        ))
    })?;
    Ok(Box::new(Nccl::init(rank, world, local_rank(), None)?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_communicator(_world: usize) -> Result<Box<dyn Communicator>> {
    Err(Error::Distributed(
        "dlm was built without the `nccl` feature".into(),
    ))
}

#[cfg(feature = "mpi")]
fn mpi_communicator(world: usize) -> Result<Box<dyn Communicator>> {
    let comm = super::mpi::Mpi::init()?;
    if comm.world_size() != world {
        return Err(Error::Distributed(format!(
            "the launcher announced {world} ranks but MPI reports {}",
            comm.world_size()
        )));
    }
    Ok(Box::new(comm))
}

#[cfg(not(feature = "mpi"))]
fn mpi_communicator(world: usize) -> Result<Box<dyn Communicator>> {
    Err(without_mpi(world))
}

fn without_mpi(world: usize) -> Error {
    Error::Distributed(format!(
        "{world} ranks need a dlm built with the `mpi` feature: apt-get install libopenmpi-dev \
         openmpi-bin libclang-dev, then cargo build --release --features mpi"
    ))
}

/// Runs this command again as `mpirun -np N <this executable> <same arguments>` and waits for it.
/// OpenMPI is told to accept root (containers) and more ranks than cores, as CI needs.
pub fn relaunch_under_mpirun(world: usize) -> Result<()> {
    // NCCL ranks need only mpirun's environment, not the MPI library.
    if !cfg!(feature = "mpi") && !cfg!(feature = "nccl") {
        return Err(without_mpi(world));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let mut cmd = Command::new("mpirun");
    cmd.arg("-np")
        .arg(world.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1));
    for (var, value) in [
        ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
        ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
        ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
    ] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, value);
        }
    }
    // Each launch gets its own session directory: two mpiruns starting at once (two runs, or
    // two tests) otherwise race to create the shared /tmp/ompi.HOST.UID and one fails with
    // "File exists" before any rank starts.
    let session = std::env::temp_dir().join(format!(
        "dlm-mpi-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&session).map_err(|e| Error::io(&session, e))?;
    for var in ["OMPI_MCA_orte_tmpdir_base", "PRTE_MCA_prte_tmpdir_base"] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, &session);
        }
    }
    let status = cmd.status();
    let _ = std::fs::remove_dir_all(&session);
    let status = status.map_err(|e| {
        Error::Distributed(format!(
            "cannot run mpirun ({e}); install OpenMPI (apt-get install openmpi-bin) or start the \
             ranks with your own launcher"
        ))
    })?;
    if !status.success() {
        return Err(Error::Distributed(format!(
            "mpirun -np {world} ended with {status}; the failing rank's error is above"
        )));
    }
    Ok(())
}
