//! Handing a few bytes from rank 0 to every rank before any GPU communicator exists: NCCL's
//! unique id. Two ways: torchrun-style over TCP (rank 0 listens on `MASTER_ADDR:MASTER_PORT`, the
//! others connect), or through an already running communicator (MPI, under an MPI launcher).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::Communicator;
use crate::error::{Error, Result};

/// How long rank 0 waits for the others, and they for rank 0: ranks of one job may start
/// minutes apart on a busy cluster.
const TIMEOUT: Duration = Duration::from_secs(300);
/// torchrun's defaults.
#[cfg(feature = "nccl")]
const DEFAULT_ADDR: &str = "127.0.0.1";
#[cfg(feature = "nccl")]
const DEFAULT_PORT: u16 = 29500;

/// Rank 0's address from `MASTER_ADDR` and `MASTER_PORT` (torchrun's names and defaults). Under
/// torchrun (`TORCHELASTIC_RUN_ID` set) its agent's store already holds MASTER_PORT, so dlm takes
/// the next port.
#[cfg(feature = "nccl")]
pub fn master_addr() -> Result<(String, u16)> {
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p
            .trim()
            .parse()
            .map_err(|_| Error::Distributed(format!("MASTER_PORT `{p}` is not a port number")))?,
        Err(_) => DEFAULT_PORT,
    };
    let under_torchrun = std::env::var_os("TORCHELASTIC_RUN_ID").is_some();
    let port = match under_torchrun {
        true => port.checked_add(1).ok_or_else(|| {
            Error::Distributed("MASTER_PORT 65535 leaves dlm no port under torchrun".into())
        })?,
        false => port,
    };
    Ok((addr, port))
}

/// `payload` (given on rank 0 only) on every rank of `world`, over TCP: rank 0 listens on all
/// interfaces at `port`, the others connect to `addr:port`.
pub fn share_over_tcp(
    rank: usize,
    world: usize,
    (addr, port): (&str, u16),
    payload: Option<&[u8]>,
    len: usize,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    match (rank, payload) {
        (0, Some(p)) => {
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                Error::Distributed(format!(
                    "rank 0 cannot listen on port {port}: {e} (set MASTER_PORT)"
                ))
            })?;
            serve(&listener, world - 1, p, deadline)?;
            Ok(p.to_vec())
        }
        (0, None) | (_, Some(_)) => Err(Error::Distributed(
            "only rank 0 supplies the shared bytes".into(),
        )),
        (_, None) => fetch(&format!("{addr}:{port}"), len, deadline),
    }
}

/// Rank 0's side: writes `payload` to each of the next `peers` connections.
fn serve(listener: &TcpListener, peers: usize, payload: &[u8], deadline: Instant) -> Result<()> {
    let io = |e: std::io::Error| Error::Distributed(format!("rendezvous (rank 0): {e}"));
    // Non-blocking accepts, so that a rank that never comes ends in an error, not a hang.
    listener.set_nonblocking(true).map_err(io)?;
    let mut served = 0;
    while served < peers {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).map_err(io)?;
                conn.write_all(payload).map_err(io)?;
                served += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(Error::Distributed(format!(
                        "rendezvous: {served} of {peers} ranks connected to rank 0 within {}s",
                        TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

/// Another rank's side: connects to rank 0 (retrying until it listens) and reads `len` bytes.
fn fetch(addr: &str, len: usize, deadline: Instant) -> Result<Vec<u8>> {
    let mut conn = loop {
        match TcpStream::connect(addr) {
            Ok(conn) => break conn,
            Err(e) if Instant::now() > deadline => {
                return Err(Error::Distributed(format!(
                    "rendezvous: cannot reach rank 0 at {addr} (MASTER_ADDR:MASTER_PORT): {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut buf = vec![0u8; len];
    conn.set_read_timeout(Some(TIMEOUT))
        .and_then(|_| conn.read_exact(&mut buf))
        .map_err(|e| Error::Distributed(format!("rendezvous with {addr}: {e}")))?;
    Ok(buf)
}

/// `payload` (given on rank 0 only) on every rank, through a running communicator: an f64 sum in
/// which every other rank contributes zeros, exact for byte values.
pub fn share_through(
    comm: &dyn Communicator,
    payload: Option<&[u8]>,
    len: usize,
) -> Result<Vec<u8>> {
    let mut buf: Vec<f64> = match payload {
        Some(p) if p.len() == len => p.iter().map(|&b| b as f64).collect(),
        Some(_) => {
            return Err(Error::Distributed(
                "shared bytes of the wrong length".into(),
            ))
        }
        None => vec![0.0; len],
    };
    comm.all_reduce_sum_f64(&mut buf)?;
    Ok(buf.iter().map(|&x| x as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;

    #[test]
    fn rank_zero_serves_every_other_rank() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = std::thread::scope(|s| {
            let server = s.spawn(|| serve(&listener, 3, &payload, deadline));
            let peers: Vec<_> = (0..3)
                .map(|_| s.spawn(|| fetch(&addr, 128, deadline).unwrap()))
                .collect();
            let got: Vec<Vec<u8>> = peers.into_iter().map(|p| p.join().unwrap()).collect();
            server.join().unwrap().unwrap();
            got
        });
        assert!(got.iter().all(|g| *g == payload));
    }

    #[test]
    fn a_missing_rank_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve(&listener, 1, b"id", Instant::now()).unwrap_err();
        assert!(err.to_string().contains("0 of 1 ranks"), "{err}");
        let closed = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = fetch(&closed, 2, Instant::now()).unwrap_err();
        assert!(err.to_string().contains("cannot reach rank 0"), "{err}");
        let err = share_over_tcp(1, 2, ("127.0.0.1", 1), Some(b"id"), 2).unwrap_err();
        assert!(err.to_string().contains("only rank 0"), "{err}");
    }

    #[test]
    fn bytes_pass_through_a_communicator_unchanged() {
        let payload: Vec<u8> = (0..=255).collect();
        let got = share_through(&SingleProcess, Some(&payload), 256).unwrap();
        assert_eq!(got, payload);
    }
}
