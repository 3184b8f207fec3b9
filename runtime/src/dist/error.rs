//! Errors of the distributed layer. Each one names the variable, address or rank involved,
//! because "the job hung" is the failure ms-swift users report most and can least debug.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {var}={value:?}: expected {expected}")]
    Env {
        var: String,
        value: String,
        expected: String,
    },
    #[error("environment variable {var} is required when {reason}")]
    MissingEnv { var: &'static str, reason: String },
    #[error(
        "rank {rank}: could not reach the rendezvous at {addr} within {}s (check MASTER_ADDR and MASTER_PORT): {last_error}",
        .waited.as_secs()
    )]
    Unreachable {
        rank: usize,
        addr: String,
        waited: Duration,
        last_error: String,
    },
    #[error("rank 0: cannot listen for the rendezvous on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: ranks {missing:?} of {world_size} did not arrive within {}s", .waited.as_secs())]
    Missing {
        what: String,
        missing: Vec<usize>,
        world_size: usize,
        waited: Duration,
    },
    #[error("rank {rank}: lost rank {peer} during {op}: {detail}")]
    PeerLost {
        rank: usize,
        peer: usize,
        op: String,
        detail: String,
    },
    #[error("rank {rank}: rank {peer} sent nothing for {}s during {op} (--ddp_timeout)", .waited.as_secs())]
    PeerTimeout {
        rank: usize,
        peer: usize,
        op: String,
        waited: Duration,
    },
    #[error("{cause} (rank {rank} noticed during {op})")]
    Aborted {
        rank: usize,
        op: String,
        cause: String,
    },
    #[error("rank {rank}: {op} did not complete within {}s (--ddp_timeout) and no rank reported a failure", .waited.as_secs())]
    Stalled {
        rank: usize,
        op: String,
        waited: Duration,
    },
    #[error("rank {rank}: NCCL {op} failed: {detail}")]
    Nccl {
        rank: usize,
        op: String,
        detail: String,
    },
    #[error("rendezvous store at {addr}: {message}")]
    Store { addr: String, message: String },
    #[error("ranks disagree: {0}")]
    Mismatch(String),
    #[error("--ddp_backend {0}: {1}")]
    Backend(String, String),
    #[error("{op}: buffer of {found} values, but rank {peer} sent {expected}")]
    Length {
        op: String,
        peer: usize,
        expected: usize,
        found: usize,
    },
}

impl DistError {
    /// Whether this rank failed because another one did (the peer's connection closed, it
    /// reported its own failure, or it went silent past `--ddp_timeout`): the process then
    /// exits with `exit::PEER_FAILED` and the cause is the other rank's.
    pub fn is_peer_failure(&self) -> bool {
        matches!(
            self,
            DistError::PeerLost { .. } | DistError::PeerTimeout { .. } | DistError::Aborted { .. }
        )
    }
}
