//! The report document: the contract type shared with the operator
//! (`kubeswift_args::progress`); the test pins the JSON operator/PROGRESS.md documents.

pub use kubeswift_args::progress::{PROGRESS_VERSION, ProgressReport};

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
