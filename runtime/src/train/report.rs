//! What a training run reports: ms-swift's `logging.jsonl` lines and HF's
//! `trainer_state.json`, both in the key names those tools use so their readers work on ours.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// ms-swift's `format_time`: `1d 2h 3m 4s`, dropping leading zero units.
pub fn format_time(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        (total % 86_400) / 3600,
        (total % 3600) / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h {minutes}m {secs}s")
    } else if hours > 0 {
        format!("{hours}h {minutes}m {secs}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Where a run stands, for the progress fields of a log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub max_steps: u64,
    pub epoch: f64,
    pub elapsed_s: f64,
}

impl Progress {
    /// Seconds left at the average pace so far.
    pub fn remaining_s(&self) -> f64 {
        if self.step == 0 {
            return 0.0;
        }
        self.elapsed_s / self.step as f64 * self.max_steps.saturating_sub(self.step) as f64
    }

    /// ms-swift's progress fields, appended to every log line.
    fn fields(&self) -> Map<String, Value> {
        let pct = if self.max_steps == 0 {
            100.0
        } else {
            100.0 * self.step as f64 / self.max_steps as f64
        };
        let mut m = Map::new();
        m.insert("epoch".into(), json!(round(self.epoch, 2)));
        m.insert(
            "global_step/max_steps".into(),
            json!(format!("{}/{}", self.step, self.max_steps)),
        );
        m.insert("percentage".into(), json!(format!("{pct:.2}%")));
        m.insert("elapsed_time".into(), json!(format_time(self.elapsed_s)));
        m.insert(
            "remaining_time".into(),
            json!(format_time(self.remaining_s())),
        );
        m
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// One training log line: metrics (loss, grad_norm, learning_rate, token_acc, ...) then
/// memory, speed and progress, as ms-swift writes them.
pub fn train_line(
    metrics: &[(&str, f64)],
    memory_gib: f64,
    seconds_per_step: f64,
    progress: &Progress,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in metrics {
        m.insert((*k).to_string(), json!(sig(*v)));
    }
    m.insert("memory(GiB)".into(), json!(round(memory_gib, 2)));
    m.insert(
        "train_speed(s/it)".into(),
        json!(round(seconds_per_step, 6)),
    );
    m.extend(progress.fields());
    m
}

/// One evaluation log line: `eval_` prefixed metrics plus progress.
pub fn eval_line(metrics: &[(&str, f64)], progress: &Progress) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in metrics {
        m.insert(format!("eval_{k}"), json!(sig(*v)));
    }
    m.extend(progress.fields());
    m
}

/// Eight significant digits, enough for loss curves, short enough to read.
fn sig(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 8 - (v.abs().log10().floor() as i32 + 1);
    round(v, digits.clamp(0, 15))
}

/// HF's `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub best_metric: Option<f64>,
    pub best_model_checkpoint: Option<String>,
    pub epoch: f64,
    pub eval_steps: Value,
    pub global_step: u64,
    pub is_hyper_param_search: bool,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    pub log_history: Vec<Map<String, Value>>,
    pub logging_steps: Value,
    pub max_steps: u64,
    pub num_input_tokens_seen: u64,
    pub num_train_epochs: f64,
    pub save_steps: Value,
    pub total_flos: f64,
    pub train_batch_size: u64,
    pub trial_name: Option<String>,
    pub trial_params: Option<Value>,
}

impl TrainerState {
    /// Writes the state as HF does (indent 2, sorted keys come from the struct order).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// Reads a state written by us or by HF's Trainer.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: invalid trainer_state.json at line {} column {}: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_like_ms_swift() {
        assert_eq!(format_time(5.9), "5s");
        assert_eq!(format_time(65.0), "1m 5s");
        assert_eq!(format_time(3725.0), "1h 2m 5s");
        assert_eq!(format_time(90_061.0), "1d 1h 1m 1s");
    }

    #[test]
    fn train_lines_carry_ms_swift_keys() {
        let p = Progress {
            step: 5,
            max_steps: 20,
            epoch: 0.25,
            elapsed_s: 10.0,
        };
        let line = train_line(
            &[
                ("loss", 2.123456789),
                ("grad_norm", 0.5),
                ("learning_rate", 9.5e-5),
                ("token_acc", 0.4),
            ],
            1.234,
            2.0,
            &p,
        );
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"loss":2.1234568,"grad_norm":0.5,"learning_rate":0.000095,"token_acc":0.4,"memory(GiB)":1.23,"train_speed(s/it)":2.0,"epoch":0.25,"global_step/max_steps":"5/20","percentage":"25.00%","elapsed_time":"10s","remaining_time":"30s"}"#
        );
        let eval = eval_line(&[("loss", 1.5), ("token_acc", 0.5)], &p);
        assert_eq!(eval["eval_loss"], json!(1.5));
        assert_eq!(eval["global_step/max_steps"], json!("5/20"));
    }

    #[test]
    fn trainer_state_round_trips_and_reads_hf_files() {
        let hf = r#"{
  "best_metric": 1.2,
  "best_model_checkpoint": "/out/v0-20250101-000000/checkpoint-50",
  "epoch": 0.5,
  "eval_steps": 50,
  "global_step": 50,
  "is_hyper_param_search": false,
  "is_local_process_zero": true,
  "is_world_process_zero": true,
  "log_history": [{"epoch": 0.01, "grad_norm": 1.5, "learning_rate": 1e-05, "loss": 2.5, "step": 1}],
  "logging_steps": 5,
  "max_steps": 100,
  "num_input_tokens_seen": 0,
  "num_train_epochs": 1,
  "save_steps": 50,
  "stateful_callbacks": {"TrainerControl": {"args": {"should_save": true}, "attributes": {}}},
  "total_flos": 123.0,
  "train_batch_size": 1,
  "trial_name": null,
  "trial_params": null
}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer_state.json");
        std::fs::write(&path, hf).unwrap();
        let state = TrainerState::load(&path).unwrap();
        assert_eq!(state.global_step, 50);
        assert_eq!(state.log_history[0]["loss"], json!(2.5));
        state.save(&path).unwrap();
        assert_eq!(TrainerState::load(&path).unwrap(), state);
        std::fs::write(&path, "{").unwrap();
        assert!(TrainerState::load(&path).unwrap_err().contains("line 1"));
    }
}
