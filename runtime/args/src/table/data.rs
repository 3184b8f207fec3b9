//! 数据参数 — dataset arguments.

use super::{EMPTY, FALSE, NONE, TRUE, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Data, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("dataset", T::List(S::Str), EMPTY,
      "Datasets as 'path[:subset][#N]': jsonl, csv, json files or folders; #N samples N rows.").hot(),
    r("val_dataset", T::List(S::Str), EMPTY, "Validation datasets, same syntax as --dataset.").hot(),
    r("split_dataset_ratio", T::Float, float(0.01),
      "Fraction of the training set held out for validation when --val_dataset is not given; 0 disables.").hot(),
    r("data_seed", T::Int, int(42), "Random seed for dataset sampling and splitting."),
    r("dataset_num_proc", T::Int, int(1), "Worker count for dataset preprocessing.").hot(),
    r("streaming", T::Bool, FALSE, "Read and preprocess the dataset lazily as a stream (needs --max_steps).").hot(),
    r("enable_cache", T::Bool, FALSE, "Cache dataset preprocessing.").default_only(),
    r("download_mode", T::Choice(&["reuse_dataset_if_exists", "force_redownload"]),
      text("reuse_dataset_if_exists"), "Dataset download mode.").default_only(),
    r("columns", T::Dict, NONE, "Column renames as JSON, e.g. '{\"text1\": \"query\", \"text2\": \"response\"}'."),
    r("strict", T::Bool, FALSE, "Fail on the first bad row instead of dropping (and counting) bad rows."),
    r("remove_unused_columns", T::Bool, TRUE, "Drop dataset columns the template does not use."),
    r("model_name", T::List(S::Str), NONE,
      "Self-cognition only: the model's Chinese and English names, replacing {{NAME}}.").hot(),
    r("model_author", T::List(S::Str), NONE,
      "Self-cognition only: the author's Chinese and English names, replacing {{AUTHOR}}.").hot(),
    r("custom_dataset_info", T::List(S::Str), EMPTY, "JSON files registering custom datasets.").default_only(),
];
