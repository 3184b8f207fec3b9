//! Training: optimizer, learning-rate schedules, and what a run reports (logging.jsonl,
//! trainer_state.json, TensorBoard).

pub mod optimizer;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod tensorboard;
