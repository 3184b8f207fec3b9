//! Training: the `sft`/`pt` command, the loop (`trainer`, `step`), what trains (`tuning`),
//! its settings (`config`), checkpoint state (`state`), `--streaming` input (`streamed`:
//! per-rank shards, restarts, the resume cursor), the optimizer, learning-rate
//! schedules, and what a run reports (logging.jsonl, trainer_state.json, TensorBoard).

pub mod command;
pub mod config;
pub mod interrupt;
pub mod neftune;
pub mod optimizer;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod state;
pub mod step;
pub mod streamed;
pub mod tensorboard;
pub mod trainer;
pub mod tuning;
