//! Bringing a job together: rank 0 hosts the store on MASTER_PORT; every other rank
//! connects, retrying while MASTER_ADDR does not resolve yet or rank 0 is not listening
//! (pods start in any order), until the deadline. Then each rank publishes its ring
//! address and the job's fingerprint, a barrier names whoever is missing, the fingerprints
//! must agree (same arguments everywhere), and each rank connects to the next one (gloo)
//! or joins the NCCL communicator whose id rank 0 put in the store (nccl).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::collective::{Collective, Ring, Solo};
use super::data_parallel::Backend;
use super::error::DistError;
use super::store::Store;
use super::world::WorldInfo;

/// Deadlines and the job identity every rank must share.
#[derive(Debug, Clone)]
pub struct RendezvousOptions {
    /// How long the ranks may take to find each other.
    pub deadline: Duration,
    /// How long any collective may wait for a peer (`--ddp_timeout`).
    pub timeout: Duration,
    /// A hash of what must be identical on every rank (arguments, model).
    pub fingerprint: String,
    /// How the ranks exchange gradients once they met.
    pub backend: Backend,
}

/// Connects this process to the job: `Solo` alone, else the TCP ring or NCCL.
pub fn connect(
    world: &WorldInfo,
    options: &RendezvousOptions,
) -> Result<Box<dyn Collective>, DistError> {
    if world.world_size == 1 {
        return Ok(Box::new(Solo));
    }
    let deadline = Instant::now() + options.deadline;
    let left = || deadline.saturating_duration_since(Instant::now());
    let rank = world.rank;
    let ring_listener = TcpListener::bind("0.0.0.0:0").map_err(|source| DistError::Listen {
        addr: "0.0.0.0:0 (ring)".into(),
        source,
    })?;
    let ring_port = ring_listener
        .local_addr()
        .map_err(|source| DistError::Listen {
            addr: "0.0.0.0:0 (ring)".into(),
            source,
        })?
        .port();
    let (store, ring_host) = if rank == 0 {
        let store = Store::host(&format!("0.0.0.0:{}", world.master_port), world.world_size)?;
        (store, bracket(&world.master_addr))
    } else {
        let stream = dial(rank, &world.master(), deadline, options.deadline)?;
        let host = stream
            .local_addr()
            .map(|a| bracket(&a.ip().to_string()))
            .unwrap_or_else(|_| "127.0.0.1".into());
        let store = Store::join(stream, world.master(), rank, world.world_size, left())?;
        (store, host)
    };
    tracing::info!(rank, world_size = world.world_size, master = %world.master(), "rendezvous");
    store.set(&format!("ring/{rank}"), &format!("{ring_host}:{ring_port}"))?;
    store.set(&format!("fingerprint/{rank}"), &options.fingerprint)?;
    store.barrier("rendezvous", left()).map_err(|e| match e {
        DistError::Missing {
            missing,
            world_size,
            ..
        } => DistError::Missing {
            what: format!("rendezvous at {} (rank {rank} waited)", world.master()),
            missing,
            world_size,
            waited: options.deadline,
        },
        other => other,
    })?;
    let value = |key: String| -> Result<String, DistError> {
        store
            .get(&key, Duration::from_secs(5))?
            .ok_or_else(|| DistError::Store {
                addr: world.master(),
                message: format!("{key} is missing after the rendezvous barrier"),
            })
    };
    let reference = value("fingerprint/0".into())?;
    for peer in 1..world.world_size {
        let theirs = value(format!("fingerprint/{peer}"))?;
        if theirs != reference {
            return Err(DistError::Mismatch(format!(
                "rank {peer} runs different arguments or model than rank 0 (fingerprint {theirs} vs {reference})"
            )));
        }
    }
    if let Backend::Nccl { ordinal } = options.backend {
        return nccl(store, world, ordinal, options, deadline);
    }
    let next = (rank + 1) % world.world_size;
    let prev = (rank + world.world_size - 1) % world.world_size;
    let next_addr = value(format!("ring/{next}"))?;
    let mut to_next = dial(rank, &next_addr, deadline, options.deadline).map_err(|e| match e {
        DistError::Unreachable { last_error, .. } => DistError::PeerLost {
            rank,
            peer: next,
            op: format!("connecting the ring to {next_addr}"),
            detail: last_error,
        },
        other => other,
    })?;
    let hello_err = |peer: usize, e: std::io::Error| DistError::PeerLost {
        rank,
        peer,
        op: "ring setup".into(),
        detail: e.to_string(),
    };
    to_next
        .write_all(&(rank as u64).to_le_bytes())
        .map_err(|e| hello_err(next, e))?;
    let from_prev = accept(&ring_listener, deadline).map_err(|_| DistError::Missing {
        what: format!("ring connection into rank {rank}"),
        missing: vec![prev],
        world_size: world.world_size,
        waited: options.deadline,
    })?;
    let mut from_prev = from_prev;
    from_prev
        .set_read_timeout(Some(left().max(Duration::from_secs(1))))
        .map_err(|e| hello_err(prev, e))?;
    let mut who = [0u8; 8];
    from_prev
        .read_exact(&mut who)
        .map_err(|e| hello_err(prev, e))?;
    if u64::from_le_bytes(who) != prev as u64 {
        return Err(DistError::Mismatch(format!(
            "rank {rank} expected its ring neighbour rank {prev}, got rank {}",
            u64::from_le_bytes(who)
        )));
    }
    Ok(Box::new(Ring::new(
        rank,
        world.world_size,
        to_next,
        from_prev,
        store,
        options.timeout,
    )?))
}

#[cfg(feature = "cuda")]
fn nccl(
    store: Store,
    world: &WorldInfo,
    ordinal: usize,
    options: &RendezvousOptions,
    deadline: Instant,
) -> Result<Box<dyn Collective>, DistError> {
    let comm = super::nccl::Nccl::connect(
        store,
        world.rank,
        world.world_size,
        ordinal,
        options.timeout,
        deadline,
    )?;
    Ok(Box::new(comm))
}

/// `Backend::choose` never picks NCCL without the `cuda` build.
#[cfg(not(feature = "cuda"))]
fn nccl(
    _: Store,
    _: &WorldInfo,
    _: usize,
    _: &RendezvousOptions,
    _: Instant,
) -> Result<Box<dyn Collective>, DistError> {
    Err(DistError::Backend(
        "nccl".into(),
        "needs the cuda build of kubeswift".into(),
    ))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Connects to `addr`, retrying name resolution and refused connections until `deadline`.
fn dial(
    rank: usize,
    addr: &str,
    deadline: Instant,
    total: Duration,
) -> Result<TcpStream, DistError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = addr
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs
                    .next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .and_then(|sock: SocketAddr| {
                let left = deadline.saturating_duration_since(Instant::now());
                TcpStream::connect_timeout(
                    &sock,
                    left.clamp(Duration::from_millis(10), Duration::from_secs(5)),
                )
            });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(DistError::Unreachable {
                        rank,
                        addr: addr.to_string(),
                        waited: total,
                        last_error: e.to_string(),
                    });
                }
                tracing::debug!(rank, addr, error = %e, "rendezvous: retrying");
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Accepts one connection, polling so the wait ends at `deadline`.
fn accept(listener: &TcpListener, deadline: Instant) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "accept"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}
