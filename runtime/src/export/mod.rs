//! `swift export`: today `--merge_lora true`, which merges LoRA adapters into the base
//! weights and writes a standard Hugging Face model folder that transformers, vLLM and
//! `swift infer --model` load like any other.
//!
//! - `merge`: the merge itself and the folder (config, tokenizer and other side files)
//! - `shards`: safetensors shards per `--max_shard_size` and their index
//! - `command`: the thin shell over the resolved arguments

pub mod command;
pub mod merge;
pub mod shards;

use std::path::PathBuf;

/// Why an export failed; each names the argument, folder or file involved.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "--output_dir {0} already exists; pass --exist_ok true to overwrite it, or choose \
         another --output_dir"
    )]
    Exists(PathBuf),
    #[error(
        "--output_dir {output} is the {argument} folder: writing the merged model there would \
         replace its files; choose another --output_dir"
    )]
    OutputIsInput {
        output: PathBuf,
        /// `--model` or `--adapters`.
        argument: &'static str,
    },
    #[error(
        "--adapters {0}: no adapter there (expected a folder with adapter_config.json and \
         adapter_model.safetensors)"
    )]
    MissingAdapter(PathBuf),
    #[error("--adapters {dir}: {source}")]
    Adapter {
        dir: PathBuf,
        #[source]
        source: Box<crate::tuner::lora::LoraError>,
    },
    #[error("--max_shard_size {value}: {reason}")]
    ShardSize { value: String, reason: String },
    #[error("merging {what}: {source}")]
    Tensor {
        what: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}
