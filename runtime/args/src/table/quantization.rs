//! 量化参数 — quantization at model load (export's gptq/awq are in export.rs).

use super::{DTYPES, NONE, TRUE, derived, text};
use crate::group::Group;
use crate::spec::{ArgSpec, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Quantization, name, ty, d, help).default_only()
}

/// A row whose value only matters once quantization is used (refused above), but which
/// ms-swift derives and writes to args.json, so any value is read back.
const fn follows(
    name: &'static str,
    ty: T,
    d: crate::spec::DefaultValue,
    help: &'static str,
) -> ArgSpec {
    ArgSpec::new(Group::Quantization, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("quant_method", T::Choice(&["bnb", "hqq", "eetq"]), NONE, "Quantization method at load: bnb, hqq or eetq.").hot(),
    r("quant_bits", T::Int, NONE, "Quantization bits.").hot(),
    r("hqq_axis", T::Int, NONE, "hqq quantization axis."),
    follows("bnb_4bit_compute_dtype", T::Choice(DTYPES), derived("torch_dtype"), "bnb compute dtype; default: torch_dtype."),
    r("bnb_4bit_quant_type", T::Choice(&["fp4", "nf4"]), text("nf4"), "bnb quantization type."),
    r("bnb_4bit_use_double_quant", T::Bool, TRUE, "bnb double quantization."),
    r("bnb_4bit_quant_storage", T::Str, NONE, "bnb quantized storage type."),
];
