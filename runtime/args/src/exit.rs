//! The exit codes of `swift`: a contract between the binary, its launcher (which exits with
//! one of its workers' codes) and the operator (which reads them from terminated pods to
//! say why a gang failed and whether to restart it).

/// The run failed on its own error (bad data, a missing model, I/O).
pub const FAILURE: u8 = 1;
/// A usage error, argparse's code: a restart would fail the same way.
pub const USAGE: u8 = 2;
/// A subcommand or option this build does not have yet.
pub const NOT_BUILT: u8 = 3;
/// A distributed worker stopped because another rank failed first: its connection closed,
/// it reported an error, or it went silent past `--ddp_timeout`. A consequence, never the
/// cause, so whoever gathers the codes of a job's processes looks past it.
pub const PEER_FAILED: u8 = 4;

const SIGINT_EXIT: i32 = 128 + 2;
const SIGTERM_EXIT: i32 = 128 + 15;

/// How much a failed process's exit code says about why its job failed; higher says more.
/// A process killed by a signal it did not ask to stop on (SIGKILL from the OOM killer or
/// `kill -9`, SIGSEGV, SIGABRT) died before anything else could go wrong, so it comes
/// first; then a process's own error; last the processes that stopped because something
/// else did: PEER_FAILED, and SIGTERM/SIGINT (the teardown of the other pods, a
/// preemption, a user's Ctrl-C).
pub fn cause_weight(code: i32) -> u8 {
    match code {
        0 => 0,
        c if c == i32::from(PEER_FAILED) || c == SIGTERM_EXIT || c == SIGINT_EXIT => 1,
        c if c > 128 => 3,
        _ => 2,
    }
}

/// Of the exit codes of a job's processes in the order they were seen, the index of the one
/// that names the cause of the failure (the heaviest [`cause_weight`], the first seen among
/// equals); `None` when none failed.
pub fn root_cause(codes: impl IntoIterator<Item = i32>) -> Option<usize> {
    let mut best: Option<(usize, u8)> = None;
    for (i, code) in codes.into_iter().enumerate() {
        let weight = cause_weight(code);
        if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
            best = Some((i, weight));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_killed_process_is_the_cause_not_the_peers_that_noticed() {
        assert_eq!(root_cause([]), None);
        assert_eq!(root_cause([0, 0]), None);
        // Rank 1 OOM-killed; rank 0 saw the closed connection and stopped.
        assert_eq!(root_cause([4, 137]), Some(1));
        assert_eq!(root_cause([137, 4]), Some(0));
        // A worker's own error outweighs the peers it took down and the teardown's SIGTERM.
        assert_eq!(root_cause([4, 143, 1, 4]), Some(2));
        // Among equals, the first seen.
        assert_eq!(root_cause([0, 1, 2]), Some(1));
        assert_eq!(root_cause([139, 137]), Some(0));
        // Only consequences: still a cause to name.
        assert_eq!(root_cause([0, 143, 4]), Some(1));
    }

    #[test]
    fn weights() {
        assert_eq!(cause_weight(0), 0);
        assert_eq!(cause_weight(i32::from(PEER_FAILED)), 1);
        assert_eq!(cause_weight(130), 1);
        assert_eq!(cause_weight(143), 1);
        assert_eq!(cause_weight(i32::from(FAILURE)), 2);
        assert_eq!(cause_weight(i32::from(USAGE)), 2);
        assert_eq!(cause_weight(137), 3);
    }
}
