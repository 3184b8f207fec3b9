//! The training seam: every op the training-mode forward uses, and nothing else.
//!
//! Each is a differentiable CustomOp from `kubeswift-kernels` (candle 0.11's fused
//! `rms_norm`, `softmax_last_dim` and `rope` have no backward and must never appear on this
//! path). The kernels compute gradients only for inputs that track them, so a frozen
//! weight costs no backward work.

use candle_core::{DType, Tensor};
pub use kubeswift_kernels::{AttnMask, CrossEntropy};
use kubeswift_kernels::{
    CrossEntropyOptions, frozen_linear, frozen_linear_grad_only, frozen_linear_replay,
};

use super::error::{CandleContext, Result};

/// RMSNorm over the last dim, statistics in f32, times `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    kubeswift_kernels::rms_norm(x, weight, eps).ctx("rms_norm")
}

/// Half-rotation RoPE of `x` `[B, H, T, D]` at `positions` `[B, T]`, reading rows of the
/// `cos`/`sin` tables `[max_position + 1, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    kubeswift_kernels::rope(x, cos, sin, positions).ctx("rope")
}

/// Grouped-query attention: `q` `[B, Hq, T, D]`, `k`/`v` `[B, Hkv, T, D]`; `mask` says
/// which keys a query sees (causal, within its sample). Flash-style: no `[T, T]` matrix.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Tensor> {
    kubeswift_kernels::attention(q, k, v, mask).ctx("attention")
}

/// `silu(gate) * up`, the gated MLP product.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    kubeswift_kernels::silu_mul(gate, up).ctx("silu_mul")
}

/// Whether a linear layer's weight or bias is being trained (full fine-tuning,
/// `modules_to_save`): such a layer runs through candle's differentiable matmul.
pub fn is_trainable(weight: &Tensor, bias: Option<&Tensor>) -> bool {
    weight.track_op() || bias.is_some_and(Tensor::track_op)
}

/// `x W^T + b` for `x` `[.., in]`, `W` `[out, in]`. A frozen weight goes through the
/// frozen-linear kernel (no weight gradient is ever computed); a trainable one (full
/// fine-tuning) through candle's differentiable matmul.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !is_trainable(weight, bias) {
        return frozen_linear(x, weight, bias).ctx("frozen_linear");
    }
    let y = x
        .broadcast_matmul(&weight.t()?)
        .ctx("linear (trainable weight)")?;
    match bias {
        Some(b) => y.broadcast_add(b).ctx("linear bias"),
        None => Ok(y),
    }
}

/// [`linear`] whose output is only backpropagated through: a frozen weight's product is
/// skipped (zeros come out, the input gradient is exact); a trainable weight (full
/// fine-tuning) needs its product for nothing either, but candle's matmul has no such
/// mode, so it runs as [`linear`].
pub fn linear_grad_only(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if is_trainable(weight, bias) {
        return linear(x, weight, bias);
    }
    frozen_linear_grad_only(x, weight, bias).ctx("frozen_linear_grad_only")
}

/// [`linear`] replayed in a recomputation: `saved` is what it returned for the same `x` in
/// the forward; a frozen weight's product is not recomputed (the saved value comes back,
/// the input gradient is exact). A trainable weight (full fine-tuning) recomputes.
pub fn linear_replay(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    saved: &Tensor,
) -> Result<Tensor> {
    if is_trainable(weight, bias) {
        return linear(x, weight, bias);
    }
    frozen_linear_replay(x, weight, bias, saved).ctx("frozen_linear_replay")
}

/// A scalar whose backward hands `g` to `y` as its gradient: `sum(y * g)`'s gradient
/// without computing it (gradient checkpointing's recomputations).
pub fn grad_seed(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    kubeswift_kernels::grad_seed(y, g).ctx("grad_seed")
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

/// `lm_head` fused with cross-entropy: `hidden` `[N, H]`, `weight` `[V, H]`, `labels`
/// `[N]` already aligned with the rows (-100 = not trained). Never materialises all logits.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
) -> Result<CrossEntropy> {
    let labels = labels.to_dtype(DType::I64)?;
    kubeswift_kernels::linear_cross_entropy(hidden, weight, &labels, CrossEntropyOptions::default())
        .ctx("linear_cross_entropy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_candle_fused_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 7, &dev).unwrap();
        let ours = rms_norm(&x, &w, 1e-6).unwrap();
        let fused = candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap();
        assert!(max_diff(&ours, &fused) < 1e-5);
    }

    #[test]
    fn rope_matches_candle_fused_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4]], &dev).unwrap();
        let ours = rope(&x, &cos, &sin, &pos).unwrap();
        let fused = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
        assert!(max_diff(&ours, &fused) < 1e-6);
    }

    #[test]
    fn a_frozen_linear_gives_no_weight_gradient_and_a_trainable_one_does() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let frozen = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let trainable = Var::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let a = linear(x.as_tensor(), &frozen, None).unwrap();
        let b = linear(x.as_tensor(), trainable.as_tensor(), None).unwrap();
        assert!(
            max_diff(
                &a,
                &x.as_tensor()
                    .broadcast_matmul(&frozen.t().unwrap())
                    .unwrap()
            ) < 1e-5
        );
        let grads = (a + b).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen).is_none());
        assert!(grads.get(trainable.as_tensor()).is_some());
        assert!(grads.get(x.as_tensor()).is_some());
    }

    #[test]
    fn a_gradient_sums_every_use_of_a_tensor_and_is_contiguous() {
        // candle's backward is patched (scripts/vendor/candle.py) to store a tensor's first
        // gradient as it is instead of adding it to zeros; sums over several uses, a first
        // gradient that arrives transposed, and `x - x` must come out as before.
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, -2., 3.], [4., 5., -6.]], &dev).unwrap();
        let c = Tensor::new(&[[0.5f32, 1.0], [1.5, 2.0], [2.5, 3.0]], &dev).unwrap();
        let xt = x.as_tensor().t().unwrap();
        let uses = [
            (xt.contiguous().unwrap() * &c).unwrap().sum_all().unwrap(),
            (x.as_tensor() * x.as_tensor()).unwrap().sum_all().unwrap(),
            (x.as_tensor() - x.as_tensor()).unwrap().sum_all().unwrap(),
        ];
        let loss = ((&uses[0] + &uses[1]).unwrap() + &uses[2]).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert!(g.is_contiguous());
        let expected = (c.t().unwrap() + (x.as_tensor() * 2.0).unwrap()).unwrap();
        assert_eq!(
            g.to_vec2::<f32>().unwrap(),
            expected.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn every_op_passes_gradients() {
        // The property candle's fused ops lack: d(out)/d(input) and d(out)/d(weight) exist.
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (1, 2, 4, 8), &dev).unwrap();
        let w = Var::randn(1f32, 0.1, 8, &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (1, 1, 4, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (4, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (4, 4), &dev).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3]], &dev).unwrap();
        let q = rope(
            &rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
            &cos,
            &sin,
            &pos,
        )
        .unwrap();
        let a = attention(&q, k.as_tensor(), k.as_tensor(), &AttnMask::causal()).unwrap();
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
