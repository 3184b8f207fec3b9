//! Models: Qwen2/Qwen2.5, Qwen3 and Llama 3 / SmolLM2 in candle, loaded from a Hugging Face
//! folder, with one module tree and two modes (differentiable training, fast inference).
//!
//! - `config`, `qwen2`, `qwen3`, `llama`: config.json per architecture -> [`DecoderConfig`]
//! - `model_type`: ms-swift's model_type detection
//! - `weights`: (sharded) safetensors
//! - `decoder`, `causal_lm`: the module tree and its two forwards
//! - `ops`: the training seam (differentiable ops); `cpu`: inference kernels
//! - `rope`, `kv_cache`, `linear`: shared pieces
//! - `pretrained`, `generation_config`: a whole folder, tokenizer included

pub mod causal_lm;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod error;
pub mod generation_config;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod model_type;
pub mod ops;
pub mod pretrained;
pub mod qwen2;
pub mod qwen3;
pub mod rope;
pub mod weights;

pub use causal_lm::{CausalLm, LoadOptions, LogitRows, TrainBatch};
pub use config::{Architecture, DecoderConfig};
pub use cpu::SeqSpan;
pub use error::{ModelError, Result};
pub use generation_config::GenerationConfig;
pub use kv_cache::{KvCache, KvDtype, SlotId};
pub use linear::{InferRows, Linear, LinearAdapter};
pub use model_type::ModelType;
pub use pretrained::{Pretrained, PretrainedOptions};
