//! Our part of a checkpoint, beside the weights and HF's `trainer_state.json`: the
//! optimizer (f32 master weights and moments) and where the run stands (step, data cursor,
//! the counters every random draw derives from), so a resumed run continues bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::optimizer::{AdamW, OptimizerError};
use crate::train::streamed::StreamCursor;

/// The optimizer state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Step, data cursor and RNG counters.
pub const RUN_STATE_FILE: &str = "kubeswift_state.json";

/// Where a run stands after an optimizer step. The data order of an epoch is a function
/// of (`data_seed`, epoch) and LoRA dropout masks of (`seed`, `micro_step`), so these
/// counters are the whole RNG state. With `--streaming` the data position is instead each
/// rank's stream cursor (`stream`, indexed by rank; empty otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RunState {
    pub global_step: u64,
    /// The epoch of the next batch to read.
    pub epoch: u64,
    /// The index, in that epoch's order, of the next batch to read.
    pub batch_in_epoch: u64,
    /// Micro-batches run so far (seeds LoRA dropout).
    pub micro_step: u64,
    pub seed: u64,
    pub data_seed: u64,
    pub tokens_seen: u64,
    /// `--streaming`: where each rank's stream stands, gathered on rank 0 at every save.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream: Vec<StreamCursor>,
}

/// Errors reading or writing the state; they name the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}: {source}")]
    Optimizer {
        file: String,
        #[source]
        source: Box<OptimizerError>,
    },
}

/// What a resume says when a checkpoint lacks our state: it was saved without it
/// (`--save_only_model`, or by ms-swift / transformers, whose optimizer we cannot read),
/// and its weights alone can still be resumed.
fn missing_state(path: &Path) -> StateError {
    file_err(
        path,
        "not in this checkpoint (saved with --save_only_model, or by ms-swift/transformers); \
         add --resume_only_model true to resume its weights with a fresh optimizer",
    )
}

fn file_err(path: &Path, message: impl ToString) -> StateError {
    StateError::File {
        file: path.display().to_string(),
        message: message.to_string(),
    }
}

impl RunState {
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(RUN_STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| file_err(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| file_err(&path, e))
    }

    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(RUN_STATE_FILE);
        if !path.exists() {
            return Err(missing_state(&path));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            file_err(
                &path,
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })
    }
}

/// Writes every parameter's master weights and moments as f32 tensors keyed
/// `<parameter>::<kind>`, plus the step count.
pub fn save_optimizer(optimizer: &AdamW, dir: &Path) -> Result<(), StateError> {
    let path = dir.join(OPTIMIZER_FILE);
    let mut map = HashMap::new();
    for (name, kind, values) in optimizer.state() {
        let t = Tensor::from_slice(values, values.len(), &Device::Cpu)
            .map_err(|e| file_err(&path, e))?;
        map.insert(format!("{name}::{kind}"), t);
    }
    let step = Tensor::from_slice(&[optimizer.steps() as i64], 1, &Device::Cpu)
        .map_err(|e| file_err(&path, e))?;
    map.insert("::step".into(), step);
    crate::storage::weights_file::save(&map, &path).map_err(|e| file_err(&path, e))
}

/// Restores what [`save_optimizer`] wrote (and writes the master weights back into the
/// parameters).
pub fn load_optimizer(optimizer: &mut AdamW, dir: &Path) -> Result<(), StateError> {
    let path = dir.join(OPTIMIZER_FILE);
    if !path.exists() {
        return Err(missing_state(&path));
    }
    let tensors =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| file_err(&path, e))?;
    let step = tensors
        .get("::step")
        .and_then(|t| t.to_vec1::<i64>().ok())
        .and_then(|v| v.first().copied())
        .ok_or_else(|| file_err(&path, "has no ::step entry"))?;
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    for (k, t) in &tensors {
        if k != "::step" {
            values.insert(
                k.clone(),
                t.to_vec1::<f32>().map_err(|e| file_err(&path, e))?,
            );
        }
    }
    optimizer
        .restore(step as u64, |name, kind| {
            values.get(&format!("{name}::{kind}")).map(Vec::as_slice)
        })
        .map_err(|source| StateError::Optimizer {
            file: path.display().to_string(),
            source: Box::new(source),
        })
}
