//! `DataOptions`: the dataset and encoding arguments, read once from `Args`.

use kubeswift_args::Args;
use serde_json::Value;

use super::collate::PaddingSide;
use super::columns::ColumnMap;
use super::encode::{EncodeOptions, Truncation};
use super::error::DataError;
use super::preprocess::{Preprocess, SelfCognition};
use super::spec::DatasetSpec;
use crate::template::LossScale;

/// Everything the data pipeline needs from the command line.
#[derive(Debug, Clone)]
pub struct DataOptions {
    pub dataset: Vec<DatasetSpec>,
    pub val_dataset: Vec<DatasetSpec>,
    /// 0 when `--val_dataset` is given or when streaming (as ms-swift forces it).
    pub split_dataset_ratio: f64,
    pub data_seed: u64,
    pub num_proc: usize,
    pub streaming: bool,
    pub lazy_tokenize: bool,
    pub strict: bool,
    pub preprocess: Preprocess,
    pub encode: EncodeOptions,
    pub packing: bool,
    pub padding_side: PaddingSide,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            dataset: Vec::new(),
            val_dataset: Vec::new(),
            split_dataset_ratio: 0.0,
            data_seed: 42,
            num_proc: 1,
            streaming: false,
            lazy_tokenize: false,
            strict: false,
            preprocess: Preprocess::default(),
            encode: EncodeOptions::default(),
            packing: false,
            padding_side: PaddingSide::Right,
        }
    }
}

fn text<'a>(args: &'a Args, name: &str) -> Option<&'a str> {
    args.lookup(name).and_then(Value::as_str)
}

fn flag(args: &Args, name: &str) -> bool {
    args.lookup(name).and_then(Value::as_bool).unwrap_or(false)
}

fn strings(args: &Args, name: &str) -> Vec<String> {
    match args.lookup(name) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

impl DataOptions {
    /// Reads the data arguments. `model_max_length` stands in for an unset `--max_length`
    /// (ms-swift uses the model's `max_model_len`).
    pub fn from_args(args: &Args, model_max_length: Option<usize>) -> Result<Self, DataError> {
        let specs = |name: &'static str| {
            strings(args, name)
                .iter()
                .map(|s| DatasetSpec::parse_as(name, s))
                .collect::<Result<Vec<_>, _>>()
        };
        let dataset = specs("dataset")?;
        let val_dataset = specs("val_dataset")?;
        let streaming = flag(args, "streaming");
        let mut split_dataset_ratio = args
            .lookup("split_dataset_ratio")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if !(0.0..=1.0).contains(&split_dataset_ratio) {
            return Err(DataError::Split {
                ratio: split_dataset_ratio,
                reason: "must be between 0 and 1".into(),
            });
        }
        if streaming && val_dataset.is_empty() && split_dataset_ratio > 0.0 {
            // A stream is read once, front to back, with no size known ahead: nothing to
            // hold a fraction of out. Said, since it means no evaluation at all.
            tracing::warn!(
                split_dataset_ratio,
                "--streaming true holds nothing out for --split_dataset_ratio: no validation \
                 set (give --val_dataset to evaluate)"
            );
        }
        if !val_dataset.is_empty() || streaming {
            split_dataset_ratio = 0.0;
        }
        let columns: ColumnMap = match args.lookup("columns") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(to) => Ok((k.clone(), to.to_string())),
                    None => Err(DataError::Columns(format!(
                        "'{k}' must map to a column name, found {v}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let max_length = match args.lookup("max_length").and_then(Value::as_i64) {
            Some(n) if n > 0 => Some(n as usize),
            Some(n) => {
                return Err(DataError::Args(format!(
                    "--max_length {n}: must be positive"
                )));
            }
            None => model_max_length,
        };
        let int =
            |name: &str, default: i64| args.lookup(name).and_then(Value::as_i64).unwrap_or(default);
        Ok(DataOptions {
            dataset,
            val_dataset,
            split_dataset_ratio,
            data_seed: int("data_seed", 42) as u64,
            num_proc: int("dataset_num_proc", 1).max(1) as usize,
            streaming,
            lazy_tokenize: flag(args, "lazy_tokenize"),
            strict: flag(args, "strict"),
            preprocess: Preprocess {
                columns,
                self_cognition: SelfCognition::from_lists(
                    &strings(args, "model_name"),
                    &strings(args, "model_author"),
                ),
                ..Preprocess::default()
            },
            encode: EncodeOptions {
                loss_scale: LossScale::from_args(args),
                max_length,
                truncation: text(args, "truncation_strategy")
                    .and_then(Truncation::parse)
                    .unwrap_or_default(),
            },
            packing: flag(args, "packing"),
            padding_side: text(args, "padding_side")
                .and_then(PaddingSide::parse)
                .unwrap_or_default(),
        })
    }
}
