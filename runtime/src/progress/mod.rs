//! Training progress for the operator: the runtime side of the contract in
//! `operator/PROGRESS.md`.
//!
//! While a job trains, global rank 0 serves the latest [`ProgressReport`] on
//! `GET /progress` (bearer token from `$KUBESWIFT_PROGRESS_TOKEN`, port from
//! `$KUBESWIFT_PROGRESS_PORT`); when `swift` exits it writes the final report, marked
//! `finished`, as the container's termination message. Both only happen under the operator
//! (the token is set): on a laptop nothing listens and nothing is written.

mod report;
mod reporter;
mod server;
mod termination;

pub use report::{PROGRESS_VERSION, ProgressReport};
pub use reporter::ProgressReporter;
pub use server::ProgressServer;
pub use termination::{
    MAX_TERMINATION_MESSAGE_BYTES, termination_message, write_termination_message,
};

use std::path::PathBuf;

pub use kubeswift_args::progress::{
    PROGRESS_PORT as DEFAULT_PROGRESS_PORT, PROGRESS_PORT_ENV, PROGRESS_TOKEN_ENV,
};
/// Where the kubelet reads the termination message (overridable for tests).
pub const TERMINATION_LOG_ENV: &str = "KUBESWIFT_TERMINATION_LOG";
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// What the environment asks of this process, decided once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressSettings {
    pub port: u16,
    pub token: String,
    pub termination_log: PathBuf,
}

/// Reads the settings for global rank `rank`: `None` unless this is rank 0 running under
/// the operator (the token is set and not empty). A port that is not a number is an error
/// naming the variable.
pub fn settings_from_env(
    rank: usize,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProgressSettings>, String> {
    let Some(token) = get(PROGRESS_TOKEN_ENV).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if rank != 0 {
        return Ok(None);
    }
    let port = match get(PROGRESS_PORT_ENV) {
        None => DEFAULT_PROGRESS_PORT,
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("{PROGRESS_PORT_ENV}={p:?} is not a port number"))?,
    };
    let termination_log = get(TERMINATION_LOG_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TERMINATION_LOG));
    Ok(Some(ProgressSettings {
        port,
        token,
        termination_log,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn only_rank_zero_under_the_operator_reports() {
        assert_eq!(settings_from_env(0, env(&[])), Ok(None));
        assert_eq!(
            settings_from_env(0, env(&[(PROGRESS_TOKEN_ENV, "")])),
            Ok(None)
        );
        assert_eq!(
            settings_from_env(1, env(&[(PROGRESS_TOKEN_ENV, "t")])),
            Ok(None)
        );
        let s = settings_from_env(0, env(&[(PROGRESS_TOKEN_ENV, "t")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.port, DEFAULT_PROGRESS_PORT);
        assert_eq!(s.token, "t");
        assert_eq!(s.termination_log, PathBuf::from("/dev/termination-log"));
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let err = settings_from_env(
            0,
            env(&[(PROGRESS_TOKEN_ENV, "t"), (PROGRESS_PORT_ENV, "http")]),
        )
        .unwrap_err();
        assert!(err.contains("KUBESWIFT_PROGRESS_PORT"), "{err}");
        let s = settings_from_env(
            0,
            env(&[(PROGRESS_TOKEN_ENV, "t"), (PROGRESS_PORT_ENV, "31000")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.port, 31000);
    }
}
