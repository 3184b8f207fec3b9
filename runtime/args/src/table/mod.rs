//! The argument table: every argument of the seed (`seed/ms-swift-3.x-arguments.zh.txt`) as one
//! row, grouped as the seed groups them. A new argument is one row here, nothing else.
//!
//! The `Support` column says what this build implements; anything else is refused with
//! "not supported yet" (see `validate.rs`). Flip a row when the feature lands.

mod backends;
mod base;
mod data;
mod export;
mod generation;
mod model;
mod model_specific;
mod quantization;
mod rlhf;
mod sample;
mod serving;
mod template;
mod train;
mod training;
mod tuners;

use crate::spec::{ArgSpec, DefaultValue};

pub use model_specific::{ENV_VARS, MODEL_KWARGS};

/// Every section of the table, in the seed's order.
const SECTIONS: &[&[ArgSpec]] = &[
    base::ROWS,
    model::ROWS,
    data::ROWS,
    template::ROWS,
    generation::ROWS,
    quantization::ROWS,
    training::ROWS,
    tuners::ROWS,
    backends::ROWS,
    train::ROWS,
    rlhf::ROWS,
    serving::ROWS,
    export::ROWS,
    sample::ROWS,
];

/// Every row of the table (a name may appear in several groups, as in the seed).
pub fn rows() -> impl Iterator<Item = &'static ArgSpec> {
    SECTIONS.iter().flat_map(|s| s.iter())
}

// Short names for defaults so rows read like the seed.
pub(crate) const NONE: DefaultValue = DefaultValue::None;
pub(crate) const TRUE: DefaultValue = DefaultValue::Bool(true);
pub(crate) const FALSE: DefaultValue = DefaultValue::Bool(false);
pub(crate) const EMPTY: DefaultValue = DefaultValue::List(&[]);

pub(crate) const fn int(v: i64) -> DefaultValue {
    DefaultValue::Int(v)
}

pub(crate) const fn float(v: f64) -> DefaultValue {
    DefaultValue::Float(v)
}

pub(crate) const fn text(v: &'static str) -> DefaultValue {
    DefaultValue::Str(v)
}

pub(crate) const fn derived(rule: &'static str) -> DefaultValue {
    DefaultValue::Derived(rule)
}

/// Weight dtypes ms-swift accepts.
pub(crate) const DTYPES: &[&str] = &["float16", "bfloat16", "float32"];

/// Distributed backends ms-swift accepts; we build NCCL (GPU) and a gloo-like TCP ring (CPU).
pub(crate) const DDP_BACKENDS: &[&str] = &["nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl"];
pub(crate) const DDP_BACKENDS_BUILT: &[&str] = &["nccl", "gloo"];

/// Loss-scale names ms-swift accepts and the ones we build.
pub(crate) const LOSS_SCALES: &[&str] = &[
    "default",
    "last_round",
    "all",
    "react",
    "agentflan",
    "alpha_umi",
    "qwen",
];
pub(crate) const LOSS_SCALES_BUILT: &[&str] = &["default", "last_round", "all"];
