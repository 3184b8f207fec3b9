//! The training seam: every op the training-mode forward uses, and nothing else.
//!
//! Implemented here with plain differentiable candle ops (candle 0.11's fused `rms_norm`,
//! `softmax_last_dim` and `rope` have no backward and must never appear on this path).
//! When `kubeswift-kernels` lands, each function body becomes a call to its CustomOp with
//! the same signature; the module tree does not change.

use candle_core::{D, DType, Tensor};

use super::error::{CandleContext, Result};

/// RMSNorm as transformers computes it: in f32, then back to the input dtype, times weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)
        .ctx("rms_norm")
}

/// Half-rotation RoPE of `x` `[B, H, T, D]` with `cos`/`sin` `[B, T, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _h, t, d) = x.dims4()?;
    let half = d / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?
        .reshape((b, 1, t, d))?
        .to_dtype(x.dtype())?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?
        .reshape((b, 1, t, d))?
        .to_dtype(x.dtype())?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?).ctx("rope")
}

/// Causal grouped-query attention: `q` `[B, Hq, T, D]`, `k`/`v` `[B, Hkv, T, D]`, `mask`
/// additive `[B, 1, T, T]` (0 where a query may look, -inf elsewhere). Softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let k = repeat_kv(k, hq / hkv)?;
    let v = repeat_kv(v, hq / hkv)?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    let probs = softmax_last_dim(&scores)?.to_dtype(q.dtype())?;
    let out = probs.matmul(&v.contiguous()?)?;
    debug_assert_eq!(out.dims(), &[b, hq, t, d]);
    Ok(out)
}

/// `silu(gate) * up`, the gated MLP product.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    (gate.silu()? * up).ctx("silu_mul")
}

/// `x W^T + b` for `x` `[.., in]`, `W` `[out, in]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b).ctx("linear bias"),
        None => Ok(y),
    }
}

/// Rows of `table` `[V, H]` for `ids` `[B, T]` -> `[B, T, H]`.
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let h = table.dim(1)?;
    table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, h))
        .ctx("embedding")
}

/// Softmax built from differentiable primitives (max-subtracted for stability).
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&z).ctx("softmax")
}

fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    // [B, H, T, D] -> [B, H, G, T, D] -> [B, H*G, T, D]: each kv head serves G query heads.
    x.unsqueeze(2)?
        .broadcast_as((b, h, groups, t, d))?
        .reshape((b, h * groups, t, d))
        .ctx("repeat_kv")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_candle_fused_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 7, &dev).unwrap();
        let ours = rms_norm(&x, &w, 1e-6).unwrap();
        let fused = candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap();
        let diff: f32 = (ours - fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn rope_matches_candle_fused_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let ours = rope(&x, &cos.unsqueeze(0).unwrap(), &sin.unsqueeze(0).unwrap()).unwrap();
        let fused = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
        let diff: f32 = (ours - fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn every_op_passes_gradients() {
        // The property candle's fused ops lack: d(out)/d(input) and d(out)/d(weight) exist.
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (1, 2, 4, 8), &dev).unwrap();
        let w = Var::randn(1f32, 0.1, 8, &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (1, 1, 4, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (1, 4, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (1, 4, 4), &dev).unwrap();
        let mask = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev).unwrap();
        let q = rope(
            &rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
            &cos,
            &sin,
        )
        .unwrap();
        let a = attention(&q, k.as_tensor(), k.as_tensor(), &mask).unwrap();
        let out = silu_mul(&a, &a).unwrap().sum_all().unwrap();
        let grads = out.backward().unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("k", &k)] {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}
