//! Borrowing a CPU tensor's elements for the kernels, without copying. The borrow lives
//! inside candle's storage lock, hence the closures.

use candle_core::{CpuStorage, Storage, Tensor};
use kubeswift_kernels::cpu::alloc::{self, HugePages};

use super::linear::WeightSlice;
use crate::model::error::{ModelError, Result};

/// Runs `f` on the elements of a contiguous f32 CPU tensor.
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(ModelError::Input(format!(
            "CPU kernel input must be a contiguous f32 CPU tensor, got {:?} {:?}",
            t.dtype(),
            t.shape()
        ))),
    }
}

/// Runs `f` on a weight's elements borrowed from its storage.
pub fn with_weight_slice<R>(w: &Tensor, f: impl FnOnce(WeightSlice<'_>) -> R) -> Result<R> {
    let (storage, layout) = w.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Err(ModelError::Input("linear: weight is not contiguous".into()));
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(WeightSlice::F32(&v[a..b]))),
        Storage::Cpu(CpuStorage::BF16(v)) => Ok(f(WeightSlice::BF16(&v[a..b]))),
        Storage::Cpu(CpuStorage::F16(v)) => Ok(f(WeightSlice::F16(&v[a..b]))),
        _ => Err(ModelError::Input(format!(
            "linear: weight of dtype {:?} on {:?} is not supported by the CPU kernels",
            w.dtype(),
            w.device().location()
        ))),
    }
}

/// Moves a CPU tensor's memory onto transparent huge pages when it is large enough to
/// matter (see [`kubeswift_kernels::cpu::alloc::back_with_huge_pages`]): decoding reads
/// every weight once per token, and with 4 KiB pages much of that walk is TLB misses.
pub fn back_with_huge_pages(t: &Tensor) -> HugePages {
    match &*t.storage_and_layout().0 {
        Storage::Cpu(CpuStorage::F32(v)) => alloc::back_with_huge_pages(v),
        Storage::Cpu(CpuStorage::BF16(v)) => alloc::back_with_huge_pages(v),
        Storage::Cpu(CpuStorage::F16(v)) => alloc::back_with_huge_pages(v),
        _ => HugePages::Unsupported,
    }
}
