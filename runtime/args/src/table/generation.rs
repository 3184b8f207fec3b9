//! 生成参数 — generation arguments (unset values come from generation_config.json).

use super::{EMPTY, FALSE, NONE, int};
use crate::group::Group;
use crate::spec::{ArgSpec, Scalar as S, ValueType as T};

const fn r(name: &'static str, ty: T, d: crate::spec::DefaultValue, help: &'static str) -> ArgSpec {
    ArgSpec::new(Group::Generation, name, ty, d, help)
}

#[rustfmt::skip]
pub(super) const ROWS: &[ArgSpec] = &[
    r("max_new_tokens", T::Int, NONE, "Max new tokens to generate; default: no limit.").hot(),
    r("temperature", T::Float, NONE, "Sampling temperature (0 = greedy); default: generation_config.json."),
    r("top_k", T::Int, NONE, "Top-k sampling; default: generation_config.json."),
    r("top_p", T::Float, NONE, "Top-p (nucleus) sampling; default: generation_config.json."),
    r("repetition_penalty", T::Float, NONE, "Repetition penalty; default: generation_config.json."),
    r("num_beams", T::Int, int(1), "Beam search width."),
    r("stream", T::Bool, FALSE, "Stream the output.").hot(),
    r("stop_words", T::List(S::Str), EMPTY, "Stop words besides eos (kept in the output; eos is removed)."),
    r("logprobs", T::Bool, FALSE, "Return log probabilities."),
    r("top_logprobs", T::Int, NONE, "Number of top log probabilities to return."),
];
