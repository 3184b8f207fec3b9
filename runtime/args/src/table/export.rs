//! 导出参数 — export arguments.

use super::{FALSE, NONE, derived, int, text};
use crate::group::Group;
use crate::spec::{ArgSpec, DefaultValue, ValueType as T};

const fn r(name: &'static str, ty: T, d: DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Export, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("output_dir", T::Str, derived("<checkpoint>-merged for --merge_lora, <model>-<method>-int<bits> for quantization"),
      "Where the export goes.").hot(),
    r("exist_ok", T::Bool, FALSE, "Overwrite output_dir if it exists."),
    r("quant_method", T::Choice(&["gptq", "awq", "bnb"]), NONE, "Export quantization: gptq, awq or bnb.").hot().default_only(),
    r("quant_n_samples", T::Int, int(256), "Calibration samples for gptq/awq.").default_only(),
    r("max_length", T::Int, int(2048), "max_length of the calibration set."),
    r("quant_batch_size", T::Int, int(1), "Quantization batch size.").default_only(),
    r("group_size", T::Int, int(128), "Quantization group size.").default_only(),
    r("push_to_hub", T::Bool, FALSE, "Push the export to the hub.").hot().default_only(),
    r("hub_model_id", T::Str, NONE, "Hub model id to push to.").default_only(),
    r("hub_private_repo", T::Bool, FALSE, "Make the hub repo private.").default_only(),
    r("commit_message", T::Str, text("update files"), "Hub commit message.").default_only(),
];
