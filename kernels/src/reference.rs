//! Slow reference versions of the kernels, built only from plain differentiable candle ops.
//!
//! They define what the kernels compute (tests compare values and gradients), and they are
//! what a model looks like without this crate (the benchmark's "plain candle" layer). Each
//! computes in f32 and returns the input's dtype. They materialise everything the kernels
//! avoid (`[T, T]` scores, `[N, V]` logits), so keep them to small shapes.

use candle_core::{D, DType, Device, Result, Tensor};

use crate::ops::attention::AttnMask;

/// Deterministic values uniform in `[-scale, scale)` (a xorshift stream of `seed`), for
/// tests and benchmarks that must not depend on candle's unseeded RNG.
pub fn random(seed: u64, dims: &[usize], scale: f32, device: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(values, dims, device)
}

fn f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// RMSNorm as transformers' `Qwen2RMSNorm` computes it (in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = f32(x)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    y.broadcast_mul(&f32(w)?)?.to_dtype(x.dtype())
}

/// Half-rotation rope with explicit positions (`[batch, seq]` or `[seq]`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (b, _h, t, d) = x.dims4()?;
    let half = d / 2;
    let pos = positions.to_dtype(DType::U32)?.flatten_all()?;
    let gather = |table: &Tensor| -> Result<Tensor> {
        let rows = f32(table)?.index_select(&pos, 0)?;
        if positions.rank() == 2 {
            rows.reshape((b, 1, t, half))
        } else {
            rows.reshape((1, 1, t, half))
        }
    };
    let (c, s) = (gather(cos)?, gather(sin)?);
    let xf = f32(x)?;
    let x1 = xf.narrow(3, 0, half)?;
    let x2 = xf.narrow(3, half, half)?;
    let y1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
    let y2 = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
    Tensor::cat(&[y1, y2], 3)?.to_dtype(x.dtype())
}

/// GQA attention with the `[q_len, kv_len]` scores materialised; rows that see no key
/// output zeros (like the kernel).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    let group = h / hkv;
    let repeat = |t: &Tensor| -> Result<Tensor> {
        f32(t)?
            .unsqueeze(2)?
            .broadcast_as((b, hkv, group, tk, d))?
            .reshape((b, h, tk, d))
    };
    let (kr, vr) = (repeat(k)?, repeat(v)?);
    let scores = (f32(q)?.contiguous()?.matmul(&kr.t()?)? * scale)?;
    let visible = visible_matrix(mask, b, tq, tk, q.device())?; // [b, 1, tq, tk] 0/1
    let bias = ((visible.clone() - 1.0)? * 1e9)?;
    let scores = scores.broadcast_add(&bias)?;
    let max = scores.max_keepdim(D::Minus1)?.detach();
    let e = scores.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let p = p.broadcast_mul(&visible)?;
    p.matmul(&vr.contiguous()?)?.to_dtype(q.dtype())
}

/// `[b, 1, tq, tk]` f32: 1 where query `i` may see key `j`.
fn visible_matrix(
    mask: &AttnMask,
    b: usize,
    tq: usize,
    tk: usize,
    device: &Device,
) -> Result<Tensor> {
    let ids = |t: &Option<Tensor>| -> Result<Option<Vec<i64>>> {
        t.as_ref()
            .map(|t| t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>())
            .transpose()
    };
    let (pad, seg) = (ids(&mask.key_padding)?, ids(&mask.segment_ids)?);
    let offset = tk - tq.min(tk);
    let mut m = vec![0f32; b * tq * tk];
    for bi in 0..b {
        for i in 0..tq {
            let pos = offset + i;
            for j in 0..tk {
                let mut ok = true;
                if mask.causal {
                    ok &= j <= pos;
                }
                if let Some(w) = mask.window {
                    ok &= j + w > pos;
                }
                if let Some(seg) = &seg {
                    ok &= seg[bi * tk + j] == seg[bi * tk + pos];
                }
                if let Some(pad) = &pad {
                    ok &= pad[bi * tk + j] != 0;
                }
                m[(bi * tq + i) * tk + j] = ok as u8 as f32;
            }
        }
    }
    Tensor::from_vec(m, (b, 1, tq, tk), device)
}

/// `silu(gate) * up` from exp and division.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let g = f32(gate)?;
    let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
    (silu * f32(up)?)?.to_dtype(gate.dtype())
}

/// `x W^T + b` (gradients flow to everything, including `w`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = f32(x)?.broadcast_matmul(&f32(w)?.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&f32(b)?)?,
        None => y,
    };
    y.to_dtype(x.dtype())
}

/// `x W^T + b + scale * (x A^T) B^T`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let base = f32(&linear(&f32(x)?, w, b)?)?;
    let xa = f32(x)?.broadcast_matmul(&f32(a)?.t()?)?;
    let up = (xa.broadcast_matmul(&f32(b_lora)?.t()?)? * scale)?;
    (base + up)?.to_dtype(x.dtype())
}

/// Summed cross-entropy of `softmax(hidden W^T)` over tokens whose label is not
/// `ignore_index`, with the `[N, V]` logits materialised.
pub fn linear_cross_entropy_sum(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    ignore_index: i64,
) -> Result<Tensor> {
    let logits = f32(hidden)?.matmul(&f32(weight)?.t()?)?;
    let labels = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let rows: Vec<(usize, usize)> = labels
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l != ignore_index)
        .map(|(i, &l)| (i, l as usize))
        .collect();
    cross_entropy_sum(&logits, &rows)
}

/// Summed cross-entropy of f32 `[N, V]` logits at the `(token, label)` pairs `rows`.
pub(crate) fn cross_entropy_sum(logits: &Tensor, rows: &[(usize, usize)]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let mut onehot = vec![0f32; n * v];
    for &(i, l) in rows {
        onehot[i * v + l] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, v), logits.device())?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    (logp * onehot)?.sum_all()?.neg()
}
