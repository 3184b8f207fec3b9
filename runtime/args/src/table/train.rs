//! 训练参数 — the integrated train arguments (sft, pt, rlhf) and SwanLab reporting.

use super::{EMPTY, FALSE, NONE, TRUE, derived, float, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Train, name, ty, d, help)
}
const fn swanlab(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Swanlab, name, ty, d, help).default_only()
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("load_args", T::Bool, FALSE, "Training: do not read args.json of --model/--adapters unless asked."),
    r("add_version", T::Bool, TRUE, "Add a 'vN-YYYYMMDD-HHMMSS' folder under output_dir so runs never overwrite each other."),
    r("resume_only_model", T::Bool, FALSE, "With resume_from_checkpoint: restore only the weights."),
    r("check_model", T::Bool, TRUE, "Check local model files for damage or changes."),
    r("create_checkpoint_symlink", T::Bool, FALSE, "Create '<output_dir>/best' and '<output_dir>/last' checkpoint links.").hot(),
    r("external_plugins", T::List(S::Str), EMPTY, "Python plugin files to register.").default_only(),
    r("loss_type", T::Str, NONE, "Loss type; default: the model's own loss.").default_only(),
    r("packing", T::Bool, FALSE, "Pack samples into max_length sequences."),
    r("lazy_tokenize", T::Bool, derived("False for LLMs, True for multimodal models"),
      "Tokenize while training instead of before it.").hot(),
    r("acc_strategy", T::Choice(&["token", "seq"]), text("token"), "Accuracy per token or per sequence."),
    r("max_new_tokens", T::Int, int(64), "Generation length when predict_with_generate."),
    r("temperature", T::Float, float(0.0), "Temperature when predict_with_generate."),
    r("optimizer", T::Str, NONE, "Custom optimizer plugin name.").default_only(),
    r("metric", T::Str, derived("'acc', or 'nlg' with --predict_with_generate"), "Custom metric plugin name.")
        .only(&["acc", "nlg"]),

    swanlab("swanlab_token", T::Str, NONE, "SwanLab API key."),
    swanlab("swanlab_project", T::Str, NONE, "SwanLab project (create it first on swanlab.cn)."),
    swanlab("swanlab_workspace", T::Str, NONE, "SwanLab workspace; default: the API key's user."),
    // Derived and written to args.json; only matters once SwanLab reporting (refused) is on.
    ArgSpec::new(Group::Swanlab, "swanlab_exp_name", T::Str, derived("output_dir"), "SwanLab experiment name."),
    swanlab("swanlab_mode", T::Choice(&["cloud", "local"]), text("cloud"), "SwanLab mode: cloud or local."),
];
