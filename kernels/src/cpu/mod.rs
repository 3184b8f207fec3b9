//! CPU implementations: kernels on plain slices, no candle types.
//!
//! Hot loops are compiled several times for different instruction sets and picked at run
//! time ([`isa`]), so one binary runs everywhere and still uses AVX2/AVX-512 where present.

pub mod alloc;
pub(crate) mod convert;
pub mod gemm;
pub mod isa;
pub(crate) mod math;
pub(crate) mod multiversion;
pub mod par;
pub mod rowdot;
pub mod thin;
