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

use crate::cpu::gemm::{COut, Epilogue, LowRank};
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

/// `n` zeros of `dtype` as storage: the output of a product whose value is never read
/// (see `frozen_linear_grad_only`), written by all threads.
pub(crate) fn zeros_output(n: usize, dtype: candle_core::DType) -> candle_core::CpuStorage {
    use crate::cpu::par::filled;
    use crate::storage::owned;
    match dtype {
        candle_core::DType::BF16 => owned(filled(n, half::bf16::ZERO)),
        candle_core::DType::F16 => owned(filled(n, half::f16::ZERO)),
        _ => owned(filled(n, 0f32)),
    }
}

/// `n` f32s written by `product`, a GEMM with `beta == 0` into all of them (an `m x cols`
/// product with row stride `cols`, `m * cols == n`), into fresh memory that is not
/// zero-filled first (see [`COut`]).
pub(crate) fn written_f32(
    n: usize,
    product: impl FnOnce(COut<'_>) -> Result<()>,
) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(n);
    product(COut::uninit(&mut values.spare_capacity_mut()[..n]))?;
    // SAFETY: the product (it returned Ok) wrote every element of its m x cols output,
    // which is these n elements (a GEMM given uninitialised C asserts beta == 0, and then
    // writes every element of C).
    unsafe { values.set_len(n) };
    Ok(values)
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
    product: impl FnOnce(COut<'_>, Epilogue<'_>) -> Result<()>,
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
                product(
                    COut::init(c),
                    epilogue.round_into(&mut out.spare_capacity_mut()[..n]),
                )
            })?;
            // SAFETY: the rounding epilogue wrote every element of the m x cols output (the
            // product ran: `?` above).
            unsafe { out.set_len(n) };
            Ok(crate::storage::owned(out))
        }
        candle_core::DType::F16 => with_output_scratch(n, |c| {
            product(COut::init(c), epilogue)?;
            Ok(rounded_storage(c, dtype))
        }),
        _ => Ok(crate::storage::owned(written_f32(n, |c| {
            product(c, epilogue)
        })?)),
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
