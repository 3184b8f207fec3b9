//! 基本参数 — base arguments, shared by every command that loads a model.

use super::{EMPTY, FALSE, NONE, TRUE, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Base, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("tuner_backend", T::Choice(&["peft", "unsloth"]), text("peft"),
      "Tuner implementation: 'peft' or 'unsloth'.").hot().only(&["peft"]),
    r("train_type",
      T::Choice(&["lora", "full", "longlora", "adalora", "llamapro", "adapter", "vera", "boft",
                  "fourierft", "reft"]),
      text("lora"), "Training type: a tuner (lora, ...) or 'full' for all parameters.")
        .hot().only(&["lora", "full"]),
    r("adapters", T::List(S::Str), EMPTY, "Adapter ids or paths to load (e.g. LoRA checkpoints).").hot(),
    r("seed", T::Int, int(42), "Global random seed."),
    r("model_kwargs", T::Dict, NONE,
      "Extra model-specific parameters as JSON, e.g. '{\"fps_max_frames\": 12}' (same as their environment variables)."),
    r("load_args", T::Bool, TRUE,
      "Fill unset base arguments (not data/generation ones) from args.json of --resume_from_checkpoint, --adapters or --model; True for inference and export, False for training."),
    r("load_data_args", T::Bool, FALSE, "With load_args, also read the data arguments from args.json."),
    r("use_hf", T::Bool, FALSE, "Download models/datasets from HuggingFace instead of ModelScope.").default_only(),
    r("hub_token", T::Str, NONE, "Hub token for ModelScope/HuggingFace.").default_only(),
    r("custom_register_path", T::List(S::Str), EMPTY,
      "Python files registering custom models, templates and datasets.").default_only(),
];
