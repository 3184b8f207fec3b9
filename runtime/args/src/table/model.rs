//! 模型参数 — model arguments.

use super::{DTYPES, NONE, derived};
use crate::group::Group;
use crate::spec::{ArgSpec, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Model, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("model", T::Str, NONE, "Model id or local path (a folder with config.json and safetensors).").hot(),
    r("model_type", T::Str, NONE,
      "Model type (architecture + template + loading); default: detected from the folder name and config.json architectures."),
    r("model_revision", T::Str, NONE, "Model revision on the hub.").default_only(),
    r("task_type", T::Choice(&["causal_lm", "seq_cls"]),
      derived("'causal_lm', or 'seq_cls' when --num_labels is set"),
      "Task type: 'causal_lm' or 'seq_cls'.").only(&["causal_lm"]),
    r("torch_dtype", T::Choice(DTYPES), NONE, "Weight dtype: float16, bfloat16 or float32; default: read from config.json.").hot(),
    r("attn_impl", T::Choice(&["flash_attn", "sdpa", "eager"]), NONE,
      "Attention implementation; kubeswift computes exact attention with its own fused kernel for every value."),
    r("num_labels", T::Int, NONE, "Number of labels of a classification model.").default_only(),
    r("rope_scaling", T::StrOrDict, NONE, "RoPE scaling override: 'linear' or 'dynamic' (use with max_length).").default_only(),
    r("device_map", T::StrOrDict, NONE, "device_map: 'auto', 'cpu', a JSON string or a JSON file path; default: from devices and distribution.").default_only(),
    r("max_memory", T::Dict, NONE, "Per-device memory for device_map 'auto'/'sequential', e.g. '{0: \"20GB\", 1: \"20GB\"}'.").default_only(),
    r("local_repo_path", T::Str, NONE, "Local copy of a GitHub repo some models need at load time.").default_only(),
];
