//! CPU kernels of the inference mode (no backward): the linear layer that reads weights in
//! their stored dtype, and fused RoPE + KV-cache + attention over ragged batches. The
//! training mode never calls these; it goes through `model::ops`.

pub mod attention;
pub mod elementwise;
pub mod linear;
pub(crate) mod storage;

pub use attention::{AttentionInput, Heads, QkNorm, SeqSpan, attention};
pub use linear::linear;
pub use storage::with_f32_slice;
