//! 模板参数 — template arguments.

use super::{LOSS_SCALES, LOSS_SCALES_BUILT, NONE, TRUE, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Template, name, ty, d, help)
}

/// Chat templates this build implements (the models issue).
pub(crate) const TEMPLATES_BUILT: &[&str] = &[
    "default", "chatml", "qwen", "qwen2_5", "qwen3", "llama3", "llama3_2",
];

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("template", T::Str, NONE, "Chat template type; default: chosen from the model.").hot().only(TEMPLATES_BUILT),
    r("system", T::Str, NONE, "System prompt (text or a .txt file path); default: the template's.").hot(),
    r("max_length", T::Int, NONE,
      "Max tokens of one sample; default: the model's max length (PPO, GRPO and inference: max prompt length).").hot(),
    r("truncation_strategy", T::Choice(&["delete", "left", "right"]), text("delete"),
      "What to do with a sample over max_length: delete it, or cut tokens on the left or right."),
    r("max_pixels", T::Int, NONE, "Multimodal: max pixels (H*W) of an input image; larger images are scaled down.").hot().default_only(),
    r("tools_prompt", T::Choice(&["react_en", "react_zh", "glm4", "toolbench", "qwen"]), text("react_en"),
      "Agent training: format of the tool list in the system prompt.").default_only(),
    r("norm_bbox", T::Choice(&["norm1000", "none"]), NONE, "Multimodal: bbox scaling; default: by model.").default_only(),
    r("padding_side", T::Choice(&["left", "right"]), text("right"),
      "Padding side when training with batch size >= 2 (inference always pads left)."),
    r("loss_scale", T::Choice(LOSS_SCALES), text("default"),
      "Token loss weights: 'default' (every response incl. history), 'last_round', 'all' (every token), or an agent scheme.")
        .only(LOSS_SCALES_BUILT),
    r("sequence_parallel_size", T::Int, int(1), "Sequence parallel degree.").default_only(),
    r("use_chat_template", T::Bool, TRUE, "Use the chat template (True) or the generation template (False); swift pt forces False."),
    r("template_backend", T::Choice(&["swift", "jinja"]), text("swift"),
      "Template engine: 'swift', or 'jinja' (the tokenizer's chat_template; inference only)."),
];
