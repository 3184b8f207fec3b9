//! Differentiable candle kernels for training.
//!
//! candle 0.11's fused CPU ops (`rms_norm`, `softmax_last_dim`, `rope*`) have no backward, so
//! gradients silently stop at them, and its matmul backward computes gradients for frozen
//! weights too. This crate replaces them with candle `CustomOp`s that have a forward AND a
//! backward, written for the training hot path of LoRA fine-tuning:
//!
//! | function | computes | differentiable inputs |
//! |---|---|---|
//! | [`rms_norm`] | `x / rms(x) * w` over the last dim | `x`, `w` |
//! | [`rope`] | half-rotation rotary embedding at explicit positions | `x` |
//! | [`attention`] | causal GQA scaled-dot-product attention, flash-style | `q`, `k`, `v` |
//! | [`linear_cross_entropy`] | `lm_head` projection fused with cross-entropy, chunked | `hidden`, `weight` |
//! | [`silu_mul`] | `silu(gate) * up` | `gate`, `up` |
//! | [`frozen_linear`] | `x W^T + b` with `W`, `b` frozen | `x` |
//! | [`lora_linear`] | `x W^T + b + scale * dropout(x) A^T B^T` with `W`, `b` frozen | `x`, `A`, `B` |
//!
//! Every op accepts f32, bf16 and f16 tensors and computes in f32 (bf16/f16 is storage
//! only; sums accumulate in f32), returning results in the dtype of its main input.
//! [`reference`] holds slow versions of the same functions built from plain differentiable
//! candle ops; the tests compare both, and model code can use them to cross-check.
//!
//! The CPU backend is complete. With the `cuda` feature, the same functions run on CUDA
//! tensors: RMSNorm, rope and SiLU-mul through our NVRTC-compiled kernels (`cuda` module),
//! the others through their `reference` versions on candle's CUDA backend until their fused
//! kernels land. Without the feature, a non-CPU tensor is an error naming the op.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod elem;
mod error;
mod ops;
pub mod reference;
mod storage;

pub use error::KernelError;
pub use ops::attention::{AttnMask, attention, attention_with_scale};
pub use ops::cross_entropy::{
    CrossEntropy, CrossEntropyOptions, IGNORE_INDEX, linear_cross_entropy,
};
pub use ops::grad_seed::grad_seed;
pub use ops::linear::{
    LoraDropout, dropout_factors, frozen_linear, frozen_linear_grad_only, frozen_linear_replay,
    lora_linear, lora_linear_grad_only, lora_linear_replay, lora_linear_with_dropout,
};
pub use ops::packed_weights::{PackedWeightsScope, keep_packed_weights};
pub use ops::rms_norm::rms_norm;
pub use ops::rope::{rope, rope_tables};
pub use ops::silu_mul::silu_mul;
