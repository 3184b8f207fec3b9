//! The report document. It mirrors `kubeswift_crds::progress::ProgressReport` field for
//! field (the runtime must not link the Kubernetes crates); a test in this module pins the
//! JSON both sides agree on.

use serde::{Deserialize, Serialize};

/// The schema version of [`ProgressReport`].
pub const PROGRESS_VERSION: u32 = 1;

/// One progress report, in the key names ms-swift's `logging.jsonl` uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProgressReport {
    pub version: u32,
    /// Optimizer steps done (`global_step`).
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Training loss of the last logging window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The last complete checkpoint (where a restart resumes from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub finished: bool,
}

impl ProgressReport {
    /// A report at `step` with nothing else known yet.
    pub fn at_step(step: u64) -> Self {
        ProgressReport {
            version: PROGRESS_VERSION,
            step,
            total_steps: None,
            epoch: None,
            loss: None,
            learning_rate: None,
            eta_seconds: None,
            checkpoint: None,
            finished: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_to_the_documented_shape() {
        let r = ProgressReport {
            total_steps: Some(1000),
            epoch: Some(0.4),
            loss: Some(1.23),
            learning_rate: Some(0.0001),
            eta_seconds: Some(300),
            checkpoint: Some("s3://ckpt/run/v0-20260101-000000/checkpoint-100".into()),
            ..ProgressReport::at_step(120)
        };
        // The example in operator/PROGRESS.md, key for key.
        let documented = serde_json::json!({"version": 1, "step": 120, "total_steps": 1000,
            "epoch": 0.4, "loss": 1.23, "learning_rate": 0.0001, "eta_seconds": 300,
            "checkpoint": "s3://ckpt/run/v0-20260101-000000/checkpoint-100", "finished": false});
        assert_eq!(serde_json::to_value(&r).unwrap(), documented);
        let minimal = serde_json::to_value(ProgressReport::at_step(0)).unwrap();
        assert_eq!(
            minimal,
            serde_json::json!({"version": 1, "step": 0, "finished": false})
        );
    }
}
