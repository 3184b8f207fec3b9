//! Inference: the generation engine (batched prefill and decode over the KV cache,
//! sampling, beam search, stop conditions, streaming text) and `swift infer`.

pub mod command;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod metric;
pub mod params;
pub mod prefix_cache;
pub mod result;
pub mod sampler;

pub use engine::{
    Engine, EngineOptions, EngineStats, Event, FinishReason, GenerationParams, Output, Request,
    RequestId, TokenLogprob,
};
pub use error::{InferError, Result};
pub use sampler::SamplingConfig;
