//! The rendezvous key-value store. Rank 0 hosts it on MASTER_ADDR:MASTER_PORT; the other
//! ranks keep one TCP connection to it for the whole job. Small JSON messages, each framed
//! by a little-endian u32 length.
//!
//! Besides set/get it offers barriers that know who is missing, and an `abort` key: the
//! first rank to see a failure (or the host, when a rank's connection drops without a
//! goodbye) writes the cause there, so every other rank can report the root cause ("rank 2
//! lost") instead of its own symptom ("rank 3 stopped sending").

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::DistError;

/// Where the first failure's cause is written.
pub const ABORT_KEY: &str = "abort";
/// Messages above this are refused (a stray client, not a rank).
const MAX_FRAME: usize = 16 << 20;
/// How long rank 0 waits at the end for the other ranks to leave.
const HOST_LEAVE_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Hello {
        rank: usize,
        world_size: usize,
    },
    Set {
        key: String,
        value: String,
    },
    SetIfAbsent {
        key: String,
        value: String,
    },
    Get {
        key: String,
        wait_ms: u64,
    },
    Barrier {
        name: String,
        rank: usize,
        wait_ms: u64,
    },
    Bye,
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Done,
    Value(String),
    Absent,
    BarrierMissing(Vec<usize>),
    Aborted(String),
    Refused(String),
}

pub(crate) fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "frame too large"))?;
    stream.write_all(&len.to_le_bytes())?;
    stream.write_all(body)
}

pub(crate) fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, String>,
    barriers: HashMap<String, BTreeSet<usize>>,
    /// Ranks whose connection ended (goodbye or lost): the host may leave once all have.
    gone: BTreeSet<usize>,
}

/// The store's data, shared by the host's own rank and one thread per connected rank.
pub struct StoreState {
    world_size: usize,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl StoreState {
    fn new(world_size: usize) -> Arc<Self> {
        Arc::new(StoreState {
            world_size,
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A handler thread that panicked cannot leave the map half-written (every update is
        // a single insert), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds or the deadline passes; the guard comes back either way.
    fn wait_until<'a>(
        &self,
        mut guard: MutexGuard<'a, Inner>,
        deadline: Instant,
        ready: impl Fn(&Inner) -> bool,
    ) -> MutexGuard<'a, Inner> {
        while !ready(&guard) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        guard
    }

    fn handle(&self, request: Request) -> Response {
        match request {
            Request::Hello { world_size, .. } if world_size != self.world_size => {
                Response::Refused(format!(
                    "WORLD_SIZE={world_size}, but rank 0 runs with WORLD_SIZE={}",
                    self.world_size
                ))
            }
            Request::Hello { rank, .. } if rank == 0 || rank >= self.world_size => {
                Response::Refused(format!("rank {rank} cannot join from a remote host"))
            }
            Request::Hello { .. } | Request::Bye => Response::Done,
            Request::Set { key, value } => {
                self.lock().map.insert(key, value);
                self.changed.notify_all();
                Response::Done
            }
            Request::SetIfAbsent { key, value } => {
                let now = self.lock().map.entry(key).or_insert(value).clone();
                self.changed.notify_all();
                Response::Value(now)
            }
            Request::Get { key, wait_ms } => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms);
                let watch_abort = key != ABORT_KEY;
                let guard = self.wait_until(self.lock(), deadline, |i| {
                    i.map.contains_key(&key) || (watch_abort && i.map.contains_key(ABORT_KEY))
                });
                match guard.map.get(&key) {
                    Some(v) => Response::Value(v.clone()),
                    None => match guard.map.get(ABORT_KEY) {
                        Some(cause) if watch_abort => Response::Aborted(cause.clone()),
                        _ => Response::Absent,
                    },
                }
            }
            Request::Barrier {
                name,
                rank,
                wait_ms,
            } => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms);
                let world = self.world_size;
                let mut guard = self.lock();
                guard.barriers.entry(name.clone()).or_default().insert(rank);
                self.changed.notify_all();
                let guard = self.wait_until(guard, deadline, |i| {
                    i.barriers.get(&name).is_some_and(|s| s.len() >= world)
                        || i.map.contains_key(ABORT_KEY)
                });
                let arrived = guard.barriers.get(&name).cloned().unwrap_or_default();
                if arrived.len() >= world {
                    Response::Done
                } else if let Some(cause) = guard.map.get(ABORT_KEY) {
                    Response::Aborted(cause.clone())
                } else {
                    Response::BarrierMissing((0..world).filter(|r| !arrived.contains(r)).collect())
                }
            }
        }
    }

    /// Records that `rank` went away without saying goodbye, unless a cause is known.
    fn lost(&self, rank: usize, why: &str) {
        let cause = format!(
            "rank {rank} lost its connection to the rendezvous store ({why}): the process exited or was killed"
        );
        let mut inner = self.lock();
        inner.map.entry(ABORT_KEY.into()).or_insert(cause);
        inner.gone.insert(rank);
        drop(inner);
        self.changed.notify_all();
    }

    /// Records that `rank` said goodbye and got its answer.
    fn left(&self, rank: usize) {
        self.lock().gone.insert(rank);
        self.changed.notify_all();
    }

    /// Waits (up to `grace`) until every other rank's connection ended, so the host's
    /// process does not exit while a peer still waits on an answer from it (the last
    /// barrier's reply would otherwise race the host's exit).
    fn wait_for_others(&self, grace: Duration) {
        let others = self.world_size.saturating_sub(1);
        let guard = self.wait_until(self.lock(), Instant::now() + grace, |i| {
            i.gone.len() >= others
        });
        let missing = others.saturating_sub(guard.gone.len());
        if missing > 0 {
            tracing::warn!(missing, "leaving before every rank said goodbye");
        }
    }
}

/// Serves one rank's connection until it says goodbye or drops.
fn serve(state: Arc<StoreState>, mut stream: TcpStream) {
    let mut rank = None;
    loop {
        let request = match read_frame(&mut stream)
            .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(std::io::Error::other))
        {
            Ok(r) => r,
            Err(e) => {
                if let Some(rank) = rank {
                    let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "connection closed".to_string()
                    } else {
                        e.to_string()
                    };
                    state.lost(rank, &why);
                }
                return;
            }
        };
        let bye = matches!(request, Request::Bye);
        if let Request::Hello { rank: r, .. } = &request {
            rank = Some(*r);
        }
        let response = state.handle(request);
        if matches!(response, Response::Refused(_)) {
            rank = None;
        }
        let sent = serde_json::to_vec(&response)
            .map_err(std::io::Error::other)
            .and_then(|b| write_frame(&mut stream, &b));
        if bye || sent.is_err() {
            match (sent, rank) {
                (Err(e), Some(rank)) => state.lost(rank, &e.to_string()),
                (Ok(()), Some(rank)) => state.left(rank),
                _ => {}
            }
            return;
        }
    }
}

/// A handle on the store: rank 0 uses the state directly, the others through TCP.
#[derive(Clone)]
pub struct Store {
    kind: Kind,
    rank: usize,
    world_size: usize,
    addr: String,
}

#[derive(Clone)]
enum Kind {
    Host(Arc<StoreState>),
    Remote(Arc<Mutex<TcpStream>>),
}

impl Store {
    /// Rank 0: listens on `bind` (all interfaces, MASTER_PORT) and serves every rank that
    /// connects, on its own thread, for the life of the process.
    pub fn host(bind: &str, world_size: usize) -> Result<Self, DistError> {
        let listener = TcpListener::bind(bind).map_err(|source| DistError::Listen {
            addr: bind.to_string(),
            source,
        })?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| bind.to_string());
        let state = StoreState::new(world_size);
        let shared = state.clone();
        std::thread::Builder::new()
            .name("rendezvous-store".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = stream.set_nodelay(true);
                    let state = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("rendezvous-client".into())
                        .spawn(move || serve(state, stream));
                }
            })
            .map_err(|source| DistError::Listen {
                addr: addr.clone(),
                source,
            })?;
        Ok(Store {
            kind: Kind::Host(state),
            rank: 0,
            world_size,
            addr,
        })
    }

    /// Any other rank: introduces itself on a connected stream.
    pub fn join(
        mut stream: TcpStream,
        addr: String,
        rank: usize,
        world_size: usize,
        wait: Duration,
    ) -> Result<Self, DistError> {
        let _ = stream.set_nodelay(true);
        let response = call(
            &mut stream,
            &addr,
            rank,
            &Request::Hello { rank, world_size },
            wait,
        )?;
        if let Response::Refused(message) = response {
            return Err(DistError::Store { addr, message });
        }
        Ok(Store {
            kind: Kind::Remote(Arc::new(Mutex::new(stream))),
            rank,
            world_size,
            addr,
        })
    }

    /// The host's listening address (the port matters in tests: MASTER_PORT may be 0).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn request(&self, request: Request, wait: Duration) -> Result<Response, DistError> {
        match &self.kind {
            Kind::Host(state) => Ok(state.handle(request)),
            Kind::Remote(stream) => {
                let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
                call(&mut stream, &self.addr, self.rank, &request, wait)
            }
        }
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), DistError> {
        self.request(
            Request::Set {
                key: key.into(),
                value: value.into(),
            },
            Duration::ZERO,
        )
        .map(drop)
    }

    /// Stores `value` unless the key has one; returns what the key holds afterwards.
    pub fn set_if_absent(&self, key: &str, value: &str) -> Result<String, DistError> {
        match self.request(
            Request::SetIfAbsent {
                key: key.into(),
                value: value.into(),
            },
            Duration::ZERO,
        )? {
            Response::Value(v) => Ok(v),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The value of `key`, waiting up to `wait` for some rank to set it; `Ok(None)` when
    /// it did not appear in time. A recorded abort ends the wait with its cause.
    pub fn get(&self, key: &str, wait: Duration) -> Result<Option<String>, DistError> {
        match self.request(
            Request::Get {
                key: key.into(),
                wait_ms: wait.as_millis() as u64,
            },
            wait,
        )? {
            Response::Value(v) => Ok(Some(v)),
            Response::Absent => Ok(None),
            Response::Aborted(cause) => Err(DistError::Aborted {
                rank: self.rank,
                op: format!("waiting for {key}"),
                cause,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Waits until every rank reached the barrier `name`; the error names who did not.
    pub fn barrier(&self, name: &str, wait: Duration) -> Result<(), DistError> {
        match self.request(
            Request::Barrier {
                name: name.into(),
                rank: self.rank,
                wait_ms: wait.as_millis() as u64,
            },
            wait,
        )? {
            Response::Done => Ok(()),
            Response::BarrierMissing(missing) => Err(DistError::Missing {
                what: format!("barrier {name}"),
                world_size: self.world_size,
                missing,
                waited: wait,
            }),
            Response::Aborted(cause) => Err(DistError::Aborted {
                rank: self.rank,
                op: format!("barrier {name}"),
                cause,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Tells the host this rank leaves on purpose (so its disconnect is not a failure). The
    /// host itself waits (a bounded time) for the others to leave first.
    pub fn bye(&self) {
        match &self.kind {
            Kind::Remote(_) => {
                let _ = self.request(Request::Bye, Duration::ZERO);
            }
            Kind::Host(state) => state.wait_for_others(HOST_LEAVE_GRACE),
        }
    }

    fn unexpected(&self, response: &Response) -> DistError {
        DistError::Store {
            addr: self.addr.clone(),
            message: format!("unexpected answer {response:?}"),
        }
    }
}

/// One request/response round trip; the host answers a wait itself, so the socket only
/// needs a margin on top of it.
fn call(
    stream: &mut TcpStream,
    addr: &str,
    rank: usize,
    request: &Request,
    wait: Duration,
) -> Result<Response, DistError> {
    let lost = |e: std::io::Error| DistError::PeerLost {
        rank,
        peer: 0,
        op: format!("a request to the rendezvous store at {addr}"),
        detail: e.to_string(),
    };
    let body = serde_json::to_vec(request).map_err(|e| DistError::Store {
        addr: addr.into(),
        message: e.to_string(),
    })?;
    stream
        .set_read_timeout(Some(wait + Duration::from_secs(30)))
        .map_err(lost)?;
    write_frame(stream, &body).map_err(lost)?;
    let answer = read_frame(stream).map_err(lost)?;
    serde_json::from_slice(&answer).map_err(|e| DistError::Store {
        addr: addr.into(),
        message: format!("bad answer: {e}"),
    })
}
