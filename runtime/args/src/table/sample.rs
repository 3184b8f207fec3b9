//! 采样参数 — sampling arguments, and MCTS's.

use super::{EMPTY, FALSE, NONE, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Sample, name, ty, d, help)
}
const fn mcts(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Mcts, name, ty, d, help).default_only()
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("prm_model", T::Str, NONE, "Process reward model: a model id (run with pt) or a plugin key."),
    r("orm_model", T::Str, NONE, "Outcome reward model, usually a plugin (wildcards, test cases)."),
    r("sampler_type", T::Choice(&["sample", "mcts", "dvts"]), text("sample"), "Sampling type: sample or mcts.")
        .only(&["sample"]),
    r("sampler_engine", T::Choice(&["pt", "lmdeploy", "vllm", "client", "no"]), text("pt"),
      "Engine of the sampling model: pt, lmdeploy, vllm, client or no.").only(&["pt", "no"]),
    r("output_dir", T::Str, text("sample_output"), "Output folder."),
    r("output_file", T::Str, NONE, "Output file name (jsonl, no folder); default: a timestamp."),
    r("override_exist_file", T::Bool, FALSE, "Overwrite output_file if it exists."),
    r("num_sampling_per_gpu_batch_size", T::Int, int(1), "Batch size of each sampling step."),
    r("num_sampling_per_gpu_batches", T::Int, NONE, "How many batches to sample."),
    r("n_best_to_keep", T::Int, int(5), "Best sequences to keep."),
    r("data_range", T::List(S::Int), EMPTY,
      "Shard of the dataset this process handles, '2 3' = third of three shards (0-based index, count)."),
    r("temperature", T::Float, float(1.0), "Sampling temperature."),
    r("prm_threshold", T::Float, float(0.0), "Drop results whose PRM score is below this."),
    r("easy_query_threshold", T::Float, NONE, "Drop queries whose ORM-correct fraction is above this."),
    r("engine_kwargs", T::Dict, NONE, "Extra sampler_engine arguments as JSON, e.g. '{\"cache_max_entry_count\":0.7}'."),
    r("num_return_sequences", T::Int, int(64), "Raw sequences returned per sample."),
    r("cache_files", T::List(S::Str), EMPTY, "Output files of a previous sampling run to score with PRM/ORM (sampler_engine no)."),

    mcts("rollout_depth", T::Int, int(5), "MCTS: max rollout depth."),
    mcts("rollout_start_depth", T::Int, int(3), "MCTS: depth where rollouts start (shallower nodes only expand)."),
    mcts("max_iterations", T::Int, int(100), "MCTS: max iterations."),
    mcts("process_reward_rate", T::Float, float(0.0), "MCTS: share of process reward in a node's value."),
    mcts("exploration_rate", T::Float, float(0.5), "MCTS: UCT exploration parameter."),
    mcts("api_key", T::Str, text("EMPTY"), "API key of the client engine."),
    mcts("base_url", T::Str, text("https://dashscope.aliyuncs.com/compatible-mode/v1"), "Base URL of the client engine."),
];
