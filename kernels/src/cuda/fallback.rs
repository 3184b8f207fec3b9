//! Ops that have no CUDA kernel yet, on CUDA tensors: their [`crate::reference`] versions
//! (attention and the frozen linear call `reference` directly; what needs more is here)
//! (plain candle ops, so cuBLAS matmuls and candle's CUDA elementwise kernels), computed in
//! f32. Correct and differentiable, and they keep a GPU run whole while the fused kernels
//! (flash attention, chunked cross-entropy, LoRA linear) are written; they materialise what
//! the CPU kernels avoid (`[T, T]` scores, `[N, V]` logits), so memory grows with sequence
//! length and vocabulary.

use candle_core::{D, DType, Result, Tensor};

use crate::ops::cross_entropy::CrossEntropy;
use crate::ops::linear::LoraDropout;
use crate::reference;

/// `x W^T + b + scale * (drop(x) A^T) B^T`, with the CPU kernel's dropout mask (the same
/// hash of seed and index, so a GPU run drops the same elements as a CPU run).
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
    dropout: Option<LoraDropout>,
) -> Result<Tensor> {
    let base = reference::linear(x, w, b)?.to_dtype(DType::F32)?;
    let xf = x.to_dtype(DType::F32)?;
    let adapter_in = match dropout {
        Some(d) => {
            let mask = crate::ops::linear::dropout_factors(xf.elem_count(), d);
            let mask = Tensor::from_vec(mask, xf.shape(), x.device())?;
            (xf * mask)?
        }
        None => xf,
    };
    let up = adapter_in
        .broadcast_matmul(&a.to_dtype(DType::F32)?.t()?)?
        .broadcast_matmul(&b_lora.to_dtype(DType::F32)?.t()?)?;
    (base + (up * scale)?)?.to_dtype(x.dtype())
}

/// Cross-entropy with the logits materialised. `rows` are the validated `(token, label)`
/// pairs of non-ignored tokens, as the CPU op computes them.
pub(crate) fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    rows: &[(usize, usize)],
) -> Result<CrossEntropy> {
    let logits = hidden
        .to_dtype(DType::F32)?
        .matmul(&weight.to_dtype(DType::F32)?.t()?)?;
    let loss_sum = reference::cross_entropy_sum(&logits, rows)?;
    // Accuracy as the CPU op counts it: the first arg-max must be the label.
    let argmax = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
    let missed: Vec<usize> = rows
        .iter()
        .filter(|&&(i, l)| argmax[i] as usize != l)
        .map(|&(i, _)| i)
        .collect();
    Ok(CrossEntropy {
        loss_sum,
        count: rows.len(),
        correct: rows.len() - missed.len(),
        missed,
    })
}
