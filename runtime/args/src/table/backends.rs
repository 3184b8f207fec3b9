//! LMDeploy, vLLM and merge arguments. We serve with our own engine: the vLLM-style knobs our
//! engine honours (memory budget, context length, prefix caching, eager mode, LoRA rank) are
//! accepted; the rest only at their defaults.

use super::{FALSE, NONE, TRUE, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, ValueType as T};

const fn g(
    group: Group,
    name: &'static str,
    ty: T,
    d: DefaultValue,
    help: &'static str,
) -> ArgSpec {
    ArgSpec::new(group, name, ty, d, help)
}
const fn lmdeploy(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::LmDeploy, name, ty, d, help).default_only()
}
const fn vllm(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    g(Group::Vllm, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    lmdeploy("tp", T::Int, int(1), "LMDeploy tensor parallel degree.").hot(),
    lmdeploy("session_len", T::Int, NONE, "LMDeploy session length."),
    lmdeploy("cache_max_entry_count", T::Float, float(0.8), "LMDeploy KV cache fraction."),
    lmdeploy("quant_policy", T::Int, int(0), "LMDeploy KV quantization policy."),
    lmdeploy("vision_batch_size", T::Int, int(1), "LMDeploy vision batch size."),

    vllm("gpu_memory_utilization", T::Float, float(0.9), "Fraction of accelerator memory the engine may use (KV budget).").hot(),
    vllm("tensor_parallel_size", T::Int, int(1), "Tensor parallel degree.").hot().default_only(),
    vllm("pipeline_parallel_size", T::Int, int(1), "Pipeline parallel degree.").default_only(),
    vllm("max_num_seqs", T::Int, int(256), "Max sequences in flight.").default_only(),
    vllm("max_model_len", T::Int, NONE, "Max context length; default: the model's.").hot(),
    vllm("disable_custom_all_reduce", T::Bool, FALSE, "Disable vLLM's custom all-reduce.").default_only(),
    vllm("enforce_eager", T::Bool, FALSE, "Run eagerly instead of capturing CUDA graphs (saves memory, slower)."),
    vllm("limit_mm_per_prompt", T::Dict, NONE, "Multimodal items per prompt, e.g. '{\"image\": 5, \"video\": 2}'.").hot().default_only(),
    vllm("vllm_max_lora_rank", T::Int, int(16), "Largest LoRA rank the server accepts."),
    vllm("enable_prefix_caching", T::Bool, FALSE, "Cache KV of repeated prompt prefixes."),

    g(Group::Merge, "merge_lora", T::Bool, FALSE, "Merge LoRA into the base weights (lora, llamapro, longlora).").hot(),
    g(Group::Merge, "safe_serialization", T::Bool, TRUE, "Write safetensors.").only(&["true"]),
    g(Group::Merge, "max_shard_size", T::Str, text("5GB"), "Largest weight file when saving."),
];
