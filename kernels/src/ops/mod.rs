//! The differentiable ops: each file holds one op's public function, its candle
//! `CustomOp` (forward and backward) and its CPU slice kernels.

pub(crate) mod attention;
pub(crate) mod cross_entropy;
pub(crate) mod grad_seed;
pub(crate) mod linear;
pub(crate) mod packed_weights;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod silu_mul;

use candle_core::{Result, Tensor};

use crate::cpu::gemm::{Epilogue, LowRank};
use crate::storage::{Floats, floats, with_cpu};

/// Copies a tensor's values (any layout, any supported float dtype) into a contiguous f32
/// buffer in logical order.
pub(crate) fn to_f32_vec(op: &'static str, arg: &'static str, t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    with_cpu(op, arg, &t, |storage, layout| {
        let (start, end) = crate::storage::contiguous_range(op, arg, layout)?;
        let mut out = vec![0f32; end - start];
        match floats(op, arg, storage)? {
            Floats::F32(s) => out.copy_from_slice(&s[start..end]),
            Floats::BF16(s) => crate::cpu::convert::bf16_to_f32(&s[start..end], &mut out),
            Floats::F16(s) => crate::cpu::convert::f16_to_f32(&s[start..end], &mut out),
        }
        Ok(out)
    })
}

/// A tensor (no gradient history) over CPU storage of `shape`.
pub(crate) fn tensor_from(storage: candle_core::CpuStorage, shape: &candle_core::Shape) -> Tensor {
    Tensor::from_storage(
        candle_core::Storage::Cpu(storage),
        shape.clone(),
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// A tensor of `like`'s dtype and device with the given f32 values (rounded), built
/// without a trip through candle's single-threaded casts.
pub(crate) fn from_f32_vec(values: Vec<f32>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(tensor_from(
        f32_storage(values, like.dtype()),
        &shape.into(),
    ))
}

/// f32 values as CPU storage of `dtype` (f32, bf16 or f16; other dtypes get f32).
pub(crate) fn f32_storage(values: Vec<f32>, dtype: candle_core::DType) -> candle_core::CpuStorage {
    match dtype {
        candle_core::DType::BF16 | candle_core::DType::F16 => rounded_storage(&values, dtype),
        _ => crate::storage::owned(values),
    }
}

/// `values` rounded to bf16 (or f16 for `F16`) as new storage, in parallel.
fn rounded_storage(values: &[f32], dtype: candle_core::DType) -> candle_core::CpuStorage {
    use crate::elem::Elem;
    use crate::storage::owned;
    match dtype {
        candle_core::DType::F16 => owned(<half::f16 as Elem>::from_f32_slice(values)),
        _ => owned(<half::bf16 as Elem>::from_f32_slice(values)),
    }
}

thread_local! {
    static OUTPUT_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// An op's result computed in f32 by `compute` and returned as storage of `dtype`.
///
/// `compute` gets `n` values to overwrite: zeros for an f32 output, whose buffer becomes
/// the storage; for bf16/f16 outputs, per-thread scratch holding an earlier result, so
/// `compute` must write every element. Zero-filling a fresh f32 temporary of MBs for every
/// bf16 linear layer was a serial memset on the main thread (~0.7% of a bf16 LoRA step)
/// with the other threads idle.
pub(crate) fn f32_output(
    n: usize,
    dtype: candle_core::DType,
    compute: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<candle_core::CpuStorage> {
    if !matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F16) {
        let mut values = crate::cpu::par::filled(n, 0f32);
        compute(&mut values)?;
        return Ok(crate::storage::owned(values));
    }
    with_output_scratch(n, |c| {
        compute(c)?;
        Ok(rounded_storage(c, dtype))
    })
}

/// A linear op's result `[m, cols]` as storage of `dtype`: `product(c, epilogue)` runs the
/// op's GEMM into `c` (`m x cols`, written by the GEMM) with `epilogue`, which adds `term`
/// to each finished tile and, for bf16, rounds it into the output storage, so the f32
/// result is never a pass of its own (for a product whose depth fits one GEMM block, it is
/// never in memory at all). f16 results get the term in the epilogue and a rounding pass.
pub(crate) fn product_output(
    m: usize,
    cols: usize,
    dtype: candle_core::DType,
    term: Option<LowRank<'_>>,
    product: impl FnOnce(&mut [f32], Epilogue<'_>) -> Result<()>,
) -> Result<candle_core::CpuStorage> {
    let n = m * cols;
    let epilogue = Epilogue::new(cols);
    let epilogue = match term {
        Some(t) => epilogue.low_rank(t),
        None => epilogue,
    };
    match dtype {
        candle_core::DType::BF16 => {
            let mut out = Vec::<half::bf16>::with_capacity(n);
            with_output_scratch(n, |c| {
                product(c, epilogue.round_into(&mut out.spare_capacity_mut()[..n]))
            })?;
            // SAFETY: the rounding epilogue wrote every element of the m x cols output (the
            // product ran: `?` above).
            unsafe { out.set_len(n) };
            Ok(crate::storage::owned(out))
        }
        candle_core::DType::F16 => with_output_scratch(n, |c| {
            product(c, epilogue)?;
            Ok(rounded_storage(c, dtype))
        }),
        _ => {
            let mut values = crate::cpu::par::filled(n, 0f32);
            product(&mut values, epilogue)?;
            Ok(crate::storage::owned(values))
        }
    }
}

/// Runs `f` on `n` elements of this thread's f32 output scratch (earlier contents).
fn with_output_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    let mut buf = OUTPUT_SCRATCH.with(std::cell::Cell::take);
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    let result = f(&mut buf[..n]);
    OUTPUT_SCRATCH.with(|cell| cell.set(buf));
    result
}
