//! Each kernel against its plain-candle reference (values and gradients) and against
//! finite differences, plus edge cases and a gradient-flow test through a composed block.
//!
//! Tolerances (relative to the largest magnitude of the reference tensor):
//! f32: values and gradients 1e-5 vs the reference, 1e-3 vs central finite differences;
//! bf16 storage (f32 accumulation): 2e-2 vs the f32 reference on the same rounded inputs.

mod common;

mod attention;
mod candle_bf16_add;
mod cross_entropy;
mod grad_seed;
mod gradient_flow;
mod linear;
mod rms_norm;
mod rope;
mod silu_mul;
