//! Glue between candle storages/layouts and the slice kernels in [`crate::cpu`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

use crate::error::KernelError;

/// A float CPU buffer of one of the element types the kernels support.
#[derive(Clone, Copy)]
pub(crate) enum Floats<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

/// Runs `$body` with `$s` bound to the typed slice inside a [`Floats`]; the body is
/// monomorphised once per element type.
macro_rules! with_floats {
    ($floats:expr, $s:ident => $body:expr) => {
        match $floats {
            $crate::storage::Floats::F32($s) => $body,
            $crate::storage::Floats::BF16($s) => $body,
            $crate::storage::Floats::F16($s) => $body,
        }
    };
}
pub(crate) use with_floats;

/// Runs `$body` with `$s` bound to the typed contiguous values of a CPU float tensor (which
/// must be contiguous); evaluates to the body's `Result`.
macro_rules! with_tensor_floats {
    ($op:expr, $arg:expr, $t:expr, $s:ident => $body:expr) => {
        $crate::storage::with_cpu($op, $arg, $t, |storage, layout| {
            let (start, end) = $crate::storage::contiguous_range($op, $arg, layout)?;
            $crate::storage::with_floats!($crate::storage::floats($op, $arg, storage)?, full => {
                let $s = &full[start..end];
                $body
            })
        })
    };
}
pub(crate) use with_tensor_floats;

/// The float slice of a CPU storage, or an error naming the op and argument.
pub(crate) fn floats<'a>(
    op: &'static str,
    arg: &'static str,
    storage: &'a CpuStorage,
) -> Result<Floats<'a>> {
    match storage {
        CpuStorage::F32(v) => Ok(Floats::F32(v)),
        CpuStorage::BF16(v) => Ok(Floats::BF16(v)),
        CpuStorage::F16(v) => Ok(Floats::F16(v)),
        other => Err(KernelError::DType {
            op,
            arg,
            got: other.dtype(),
            expected: "f32, bf16 or f16",
        }
        .into()),
    }
}

/// Checks that a tensor is a float tensor of a supported dtype on a device the ops run on
/// (the CPU; with the `cuda` feature, CUDA devices too).
pub(crate) fn check_float(op: &'static str, arg: &'static str, t: &Tensor) -> Result<()> {
    let device = t.device();
    if !(device.is_cpu() || cfg!(feature = "cuda") && device.is_cuda()) {
        return Err(KernelError::Device {
            op,
            arg,
            device: format!("{:?}", t.device().location()),
        }
        .into());
    }
    match t.dtype() {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        got => Err(KernelError::DType {
            op,
            arg,
            got,
            expected: "f32, bf16 or f16",
        }
        .into()),
    }
}

/// Runs `f` on the CPU storage and layout of a tensor captured by an op (a frozen weight,
/// a mask), i.e. one that candle does not hand to `cpu_fwd` itself.
pub(crate) fn with_cpu<R>(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu, layout),
        _ => Err(KernelError::Device {
            op,
            arg,
            device: format!("{:?}", t.device().location()),
        }
        .into()),
    }
}

/// The contiguous element range of a layout, or an error (ops call `.contiguous()` on such
/// arguments before they reach the kernel, so this is a bug guard, not an input check).
pub(crate) fn contiguous_range(
    op: &'static str,
    arg: &'static str,
    layout: &Layout,
) -> Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        KernelError::Shape {
            op,
            arg,
            got: layout.shape().clone(),
            expected: "a contiguous tensor".to_string(),
        }
        .into()
    })
}

/// Wraps an owned buffer as candle CPU storage.
pub(crate) fn owned<T: candle_core::WithDType>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}

/// Reads a small integer tensor (positions, labels, segment ids) as i64 values in logical
/// order.
pub(crate) fn ints(op: &'static str, arg: &'static str, t: &Tensor) -> Result<Vec<i64>> {
    let t = t.flatten_all()?;
    match t.dtype() {
        DType::U8 => Ok(t.to_vec1::<u8>()?.into_iter().map(i64::from).collect()),
        DType::U32 => Ok(t.to_vec1::<u32>()?.into_iter().map(i64::from).collect()),
        DType::I32 => Ok(t.to_vec1::<i32>()?.into_iter().map(i64::from).collect()),
        DType::I64 => t.to_vec1::<i64>(),
        got => Err(KernelError::DType {
            op,
            arg,
            got,
            expected: "an integer dtype (u8, u32, i32, i64)",
        }
        .into()),
    }
}

/// Logical strides of a 4-D output laid out in the same dimension order as `like` when
/// `like` is a permutation of a dense tensor (so a `transpose(1, 2)` view of a
/// `[b, t, h, d]` buffer yields a `[b, t, h, d]`-ordered output and the transpose back is
/// free). Returns `(memory_order, strides)`: `memory_order[j]` is the logical dim stored
/// `j`-th outermost, `strides[i]` the stride of logical dim `i`.
pub(crate) fn follow_order(like: &Layout) -> ([usize; 4], [usize; 4]) {
    let dims = like.dims();
    let strides = like.stride();
    let mut order = [0usize, 1, 2, 3];
    if dims.len() == 4 {
        // Size-1 dims have arbitrary strides; sort them outermost so they never break the
        // density check.
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(if dims[i] == 1 { usize::MAX } else { strides[i] }),
                i,
            )
        });
        let dense = (0..4).all(|j| {
            let inner: usize = order[j + 1..].iter().map(|&i| dims[i]).product();
            dims[order[j]] == 1 || strides[order[j]] == inner
        });
        if !dense || order[3] != 3 {
            order = [0, 1, 2, 3];
        }
    }
    if dims.len() != 4 {
        return (order, [0; 4]);
    }
    (order, dense_strides(order, dims))
}

/// Strides of a dense buffer holding the 4-D `dims` in memory order `order`.
pub(crate) fn dense_strides(order: [usize; 4], dims: &[usize]) -> [usize; 4] {
    let mut strides = [0usize; 4];
    let mut acc = 1;
    for &i in order.iter().rev() {
        strides[i] = acc;
        acc *= dims[i];
    }
    strides
}

/// The shape of a buffer written with [`follow_order`]'s memory order.
pub(crate) fn ordered_shape(dims: &[usize], order: [usize; 4]) -> Shape {
    Shape::from(order.map(|i| dims[i]).to_vec())
}

/// The permutation that turns a buffer of [`ordered_shape`] back into logical order.
pub(crate) fn unorder(order: [usize; 4]) -> [usize; 4] {
    let mut inv = [0usize; 4];
    for (j, &i) in order.iter().enumerate() {
        inv[i] = j;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn transposed_view_keeps_its_memory_order() -> Result<()> {
        let t = Tensor::zeros((2, 5, 3, 4), DType::F32, &Device::Cpu)?.transpose(1, 2)?;
        let (order, strides) = follow_order(t.layout());
        assert_eq!(order, [0, 2, 1, 3]);
        assert_eq!(strides, t.stride());
        assert_eq!(ordered_shape(t.dims(), order).dims(), &[2, 5, 3, 4]);
        assert_eq!(unorder(order), [0, 2, 1, 3]);
        let c = Tensor::zeros((1, 3, 5, 4), DType::F32, &Device::Cpu)?;
        assert_eq!(follow_order(c.layout()), ([0, 1, 2, 3], [60, 20, 4, 1]));
        // A non-dense view (a narrowed head dim) gets a fresh contiguous order.
        let n = Tensor::zeros((1, 3, 5, 8), DType::F32, &Device::Cpu)?.narrow(3, 0, 4)?;
        assert_eq!(follow_order(n.layout()), ([0, 1, 2, 3], [60, 20, 4, 1]));
        Ok(())
    }
}
