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

/// A LoRA adapter's term `scale * lhs P` (`lhs` `[m, r]`, `p` `[r, cols]`, f32), which an op
/// adds to its f32 result `[m, cols]` in the pass that rounds it to the output's dtype.
pub(crate) struct LowRankTerm<'a> {
    pub lhs: &'a [f32],
    pub p: &'a [f32],
    pub cols: usize,
    pub scale: f32,
}

/// `values + term` rounded to bf16 (or f16 for `F16`) as new storage, in one parallel pass;
/// `values` is left holding the unrounded sums.
fn rounded_storage_plus(
    values: &mut [f32],
    term: &LowRankTerm,
    dtype: candle_core::DType,
) -> candle_core::CpuStorage {
    fn round<T: crate::elem::Elem>(values: &mut [f32], t: &LowRankTerm) -> Vec<T> {
        let n = values.len();
        let mut out = Vec::with_capacity(n);
        crate::cpu::thin::add_lp_round(
            t.lhs,
            t.p,
            t.cols,
            t.scale,
            values,
            &mut out.spare_capacity_mut()[..n],
        );
        // SAFETY: `add_lp_round` wrote every element of the n it was given.
        unsafe { out.set_len(n) };
        out
    }
    match dtype {
        candle_core::DType::F16 => crate::storage::owned(round::<half::f16>(values, term)),
        _ => crate::storage::owned(round::<half::bf16>(values, term)),
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
    f32_output_plus(n, dtype, None, compute)
}

/// [`f32_output`] plus a low-rank `term` added to what `compute` wrote (in the rounding
/// pass for bf16/f16 outputs).
pub(crate) fn f32_output_plus(
    n: usize,
    dtype: candle_core::DType,
    term: Option<&LowRankTerm>,
    compute: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<candle_core::CpuStorage> {
    if !matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F16) {
        let mut values = crate::cpu::par::filled(n, 0f32);
        compute(&mut values)?;
        if let Some(t) = term {
            crate::cpu::thin::add_lp(t.lhs, t.p, t.cols, t.scale, &mut values);
        }
        return Ok(crate::storage::owned(values));
    }
    let mut buf = OUTPUT_SCRATCH.with(std::cell::Cell::take);
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    let result = compute(&mut buf[..n]).map(|()| match term {
        Some(t) => rounded_storage_plus(&mut buf[..n], t, dtype),
        None => rounded_storage(&buf[..n], dtype),
    });
    OUTPUT_SCRATCH.with(|cell| cell.set(buf));
    result
}
