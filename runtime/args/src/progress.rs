//! The progress contract between a training pod and the operator. It lives in this light
//! crate (serde only) because both sides need it: the runtime writes it, the operator (via
//! `kubeswift_crds::progress`) reads it, and neither may link the other's dependencies. See
//! `operator/PROGRESS.md` for the whole contract:
//!
//! - while training, rank 0 serves `GET /progress` on port [`PROGRESS_PORT`] of node 0,
//!   answering this JSON to requests carrying `Authorization: Bearer $KUBESWIFT_PROGRESS_TOKEN`;
//! - when the `swift` process exits, rank 0 writes the final report as the container's
//!   termination message (`/dev/termination-log`, at most 4096 bytes).

use serde::{Deserialize, Serialize};

/// The port rank 0 serves `/progress` on (env `KUBESWIFT_PROGRESS_PORT`).
pub const PROGRESS_PORT: u16 = 29400;

/// The env var holding the bearer token `/progress` requires.
pub const PROGRESS_TOKEN_ENV: &str = "KUBESWIFT_PROGRESS_TOKEN";

/// The env var holding the port `/progress` listens on.
pub const PROGRESS_PORT_ENV: &str = "KUBESWIFT_PROGRESS_PORT";

/// The schema version of [`ProgressReport`]; a reader ignores reports of a newer major version.
pub const PROGRESS_VERSION: u32 = 1;

/// One progress report, in the key names ms-swift's `logging.jsonl` uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ProgressReport {
    /// Always [`PROGRESS_VERSION`].
    pub version: u32,
    /// Optimizer steps done (ms-swift's `global_step`).
    pub step: u64,
    /// Steps the run will take (`max_steps`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Training loss of the last logging window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Estimated seconds to the end of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The last complete checkpoint (where a restart resumes from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// True in the final report (the termination message).
    #[serde(default)]
    pub finished: bool,
    /// Why the run failed, in the final report of a failed run (the error and its causes,
    /// as `swift` printed them): what the operator puts in the job's Failed condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProgressReport {
    /// A report at `step` with nothing else known yet.
    pub fn at_step(step: u64) -> Self {
        ProgressReport {
            version: PROGRESS_VERSION,
            step,
            ..Default::default()
        }
    }

    /// Parses a report; `None` for text that is not a report of a version this build reads
    /// (an empty termination message, a Go panic, a newer schema).
    pub fn parse(text: &str) -> Option<ProgressReport> {
        let report: ProgressReport = serde_json::from_str(text.trim()).ok()?;
        (report.version == PROGRESS_VERSION).then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports_and_ignores_everything_else() {
        let r = ProgressReport::parse(
            r#"{"version":1,"step":120,"total_steps":1000,"loss":1.25,"eta_seconds":300,"future_key":1}"#,
        )
        .unwrap();
        assert_eq!(r.step, 120);
        assert_eq!(r.total_steps, Some(1000));
        assert_eq!(r.loss, Some(1.25));
        assert!(!r.finished);
        assert_eq!(ProgressReport::parse(""), None);
        assert_eq!(ProgressReport::parse("panic: boom"), None);
        assert_eq!(ProgressReport::parse(r#"{"version":2,"step":1}"#), None);
    }

    #[test]
    fn round_trips() {
        let r = ProgressReport {
            version: PROGRESS_VERSION,
            step: 7,
            total_steps: Some(10),
            finished: true,
            checkpoint: Some("s3://b/out/v0/checkpoint-7".into()),
            ..Default::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(ProgressReport::parse(&text), Some(r));
    }
}
