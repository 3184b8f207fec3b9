//! Glue between candle's CUDA storages and our kernels: typed views of inputs, fresh
//! outputs, launch shapes and error mapping.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{Layout, Result};

use crate::error::KernelError;
use crate::storage::contiguous_range;

/// Runs `$body` with `$t` the Rust element type of a float dtype (f32, bf16, f16).
macro_rules! with_float_type {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            candle_core::DType::F16 => {
                type $t = half::f16;
                $body
            }
            got => Err($crate::error::KernelError::DType {
                op: $op,
                arg: "input",
                got,
                expected: "f32, bf16 or f16",
            }
            .into()),
        }
    };
}
pub(crate) use with_float_type;

/// The contiguous elements of an input as a typed device view.
pub(crate) fn view<'a, T: CudaDType>(
    op: &'static str,
    arg: &'static str,
    storage: &'a CudaStorage,
    layout: &Layout,
) -> Result<CudaView<'a, T>> {
    let (start, end) = contiguous_range(op, arg, layout)?;
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// An uninitialised device buffer of `n` elements; every kernel writing into one covers
/// all of it.
pub(crate) fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the launch that follows writes every element before anything reads it.
    unsafe { dev.alloc::<T>(n) }
}

/// A zeroed device buffer (for outputs that kernels accumulate into).
pub(crate) fn zeros<T: DeviceRepr + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    dev.alloc_zeros::<T>(n)
}

/// Wraps a buffer as candle storage on `dev`.
pub(crate) fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// One block of `threads` per row.
pub(crate) fn per_row(rows: usize, threads: u32) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows).map_err(|_| too_large("rows", rows))?;
    Ok(LaunchConfig {
        grid_dim: (rows.max(1), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A grid-stride launch over `n` elements (kernels loop, so the grid is capped).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    let blocks = n.div_ceil(THREADS).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per row for a row kernel over `d` elements: a multiple of 32, at most 1024.
pub(crate) fn row_threads(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// A dimension as the kernels' u32, or an error naming it.
pub(crate) fn dim_u32(what: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| too_large(what, n))
}

fn too_large(what: &'static str, n: usize) -> candle_core::Error {
    KernelError::Value {
        op: "cuda",
        arg: what,
        reason: format!("{n} does not fit the kernels' 32-bit index"),
    }
    .into()
}

/// The CUDA device of an input storage.
pub(crate) fn device(storage: &CudaStorage) -> CudaDevice {
    storage.device().clone()
}

/// Maps a launch failure to an error naming the kernel.
pub(crate) fn launched<T>(
    kernel: &str,
    result: std::result::Result<T, candle_core::cuda_backend::cudarc::driver::DriverError>,
) -> Result<()> {
    result.map(|_| ()).map_err(|e| {
        KernelError::Cuda {
            what: format!("launching {kernel}"),
            detail: e.to_string(),
        }
        .into()
    })
}
