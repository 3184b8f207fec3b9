//! The linear layer of every projection (`q_proj` ... `down_proj`, `lm_head`).
//!
//! It holds the checkpoint's weight as is (`[out, in]`) and an optional adapter slot: LoRA
//! (issue 4) attaches there through [`Linear::set_adapter`] while the base weight stays
//! shared, so injecting adapters never copies the model.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::Tensor;

use super::cpu;
use super::error::{CandleContext, Result};
use super::ops;

/// Something added to a linear layer's output, such as a LoRA pair `B(A(x)) * scale`.
pub trait LinearAdapter: Send + Sync + std::fmt::Debug {
    /// Training mode: the whole layer, `x W^T + b + adapter(x)`, differentiable. The
    /// adapter computes the frozen part too so it can fuse both in one kernel.
    fn forward_train(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor>;

    /// [`Self::forward_train`] for a recomputation that only backpropagates through the
    /// result (see [`Linear::forward_train_grad_only`]): the gradients must be exact, the
    /// value may be anything. By default the full forward.
    fn forward_train_grad_only(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.forward_train(x, weight, bias)
    }

    /// Whether [`Self::forward_train_replay`] skips recomputing (by default it does not).
    fn replays(&self) -> bool {
        false
    }

    /// [`Self::forward_train`] replayed in a recomputation (see [`Linear::forward_train_replay`]):
    /// `saved` is what it returned for the same `x` in the forward. The value must be
    /// `saved`'s and the gradients exact; by default the full forward (recomputed).
    fn forward_train_replay(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        saved: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let _ = saved;
        self.forward_train(x, weight, bias)
    }

    /// Inference mode: `base + adapter(x)` for f32 rows `x` `[N, in]` and the frozen
    /// output `base` `[N, out]`.
    fn forward_infer(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor>;

    /// [`Self::forward_infer`] when the rows are one per sequence of the batch, each its
    /// last token: all the last decoder layer computes when only the last tokens' logits
    /// are wanted (see `Model::forward_infer`). An adapter that works row by row needs
    /// nothing else; one that routes rows by sequence must override it.
    fn forward_infer_last_tokens(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor> {
        self.forward_infer(x, base)
    }
}

/// What the rows of an inference forward are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferRows<'a> {
    /// Every new token of the step, sequence after sequence: the token count of each.
    Tokens(&'a [usize]),
    /// One row per sequence: its last token.
    LastTokens,
}

/// `y = x W^T + b` with the weight in checkpoint layout, plus an optional adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl Linear {
    /// A linear layer over `weight` (`[out, in]`) and an optional `bias` (`[out]`).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            adapter: None,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Attaches (or with `None` removes) an adapter; the base weight is untouched.
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }

    pub fn adapter(&self) -> Option<&Arc<dyn LinearAdapter>> {
        self.adapter.as_ref()
    }

    /// Training mode: differentiable through the seam in `ops`.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a
                .forward_train(x, &self.weight, self.bias.as_ref())
                .ctx("linear adapter"),
            None => ops::linear(x, &self.weight, self.bias.as_ref()),
        }
    }

    /// Training mode for a recomputation whose output is only backpropagated through,
    /// never read (gradient checkpointing, [`DecoderLayer::attention_half`]): gradients
    /// are those of [`Self::forward_train`], the value is unspecified, and a frozen
    /// weight's product is skipped.
    ///
    /// [`DecoderLayer::attention_half`]: super::decoder::DecoderLayer::attention_half
    pub fn forward_train_grad_only(&self, x: &Tensor) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a
                .forward_train_grad_only(x, &self.weight, self.bias.as_ref())
                .ctx("linear adapter"),
            None => ops::linear_grad_only(x, &self.weight, self.bias.as_ref()),
        }
    }

    /// Whether [`Self::forward_train_replay`] reuses the saved output: with a frozen weight
    /// and an adapter (or none) that can; a trainable weight's product is recomputed, so
    /// keeping its output would only hold memory.
    pub fn replays(&self) -> bool {
        match &self.adapter {
            Some(a) => a.replays(),
            None => !ops::is_trainable(&self.weight, self.bias.as_ref()),
        }
    }

    /// Training mode replayed in gradient checkpointing's selective recomputation: `saved`
    /// is what [`Self::forward_train`] returned for the same `x` in the forward (detached).
    /// The value is `saved`, the gradients are [`Self::forward_train`]'s, and a frozen
    /// weight's product is not recomputed (a trainable one is, as is an adapter that
    /// cannot replay).
    pub fn forward_train_replay(&self, x: &Tensor, saved: &Tensor) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a
                .forward_train_replay(x, &self.weight, self.bias.as_ref(), saved)
                .ctx("linear adapter"),
            None => ops::linear_replay(x, &self.weight, self.bias.as_ref(), saved),
        }
    }

    /// Appends `prefix.weight` (and `prefix.bias`) as mutable tensors.
    pub fn push_tensors_mut<'a>(
        &'a mut self,
        prefix: &str,
        out: &mut Vec<(String, &'a mut Tensor)>,
    ) {
        out.push((format!("{prefix}.weight"), &mut self.weight));
        if let Some(b) = &mut self.bias {
            out.push((format!("{prefix}.bias"), b));
        }
    }

    /// Appends `prefix.weight` (and `prefix.bias`).
    pub fn push_tensors<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a Tensor)>) {
        out.push((format!("{prefix}.weight"), &self.weight));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b));
        }
    }

    /// Replaces the weight (and bias), e.g. by trainable copies for `modules_to_save`.
    pub fn set_weight(&mut self, weight: Tensor, bias: Option<Tensor>) {
        self.weight = weight;
        self.bias = bias;
    }

    /// Inference mode for several layers over the same input (q/k/v, gate/up): one fused
    /// kernel pass when none carries an adapter, else one call each.
    pub fn forward_infer_many(
        layers: &[&Linear],
        x: &Tensor,
        rows: InferRows,
    ) -> Result<Vec<Tensor>> {
        if layers.iter().any(|l| l.adapter.is_some()) {
            return layers.iter().map(|l| l.forward_infer(x, rows)).collect();
        }
        let ws: Vec<(&Tensor, Option<&Tensor>)> = layers
            .iter()
            .map(|l| (&l.weight, l.bias.as_ref()))
            .collect();
        cpu::linear::linear_many(x, &ws, &row_groups(x, rows)?)
    }

    /// Inference mode: `x` is f32 `[rows, in]`; the token count of each sequence picks
    /// the kernel (see [`cpu::linear`]), which reads the weight in its stored dtype.
    pub fn forward_infer(&self, x: &Tensor, rows: InferRows) -> Result<Tensor> {
        let y = cpu::linear::linear(x, &self.weight, self.bias.as_ref(), &row_groups(x, rows)?)?;
        match (&self.adapter, rows) {
            (Some(a), InferRows::Tokens(_)) => a.forward_infer(x, y).ctx("linear adapter"),
            (Some(a), InferRows::LastTokens) => {
                a.forward_infer_last_tokens(x, y).ctx("linear adapter")
            }
            (None, _) => Ok(y),
        }
    }
}

/// The kernels' row groups: one row per sequence for last tokens.
fn row_groups<'a>(x: &Tensor, rows: InferRows<'a>) -> Result<Cow<'a, [usize]>> {
    Ok(match rows {
        InferRows::Tokens(groups) => Cow::Borrowed(groups),
        InferRows::LastTokens => Cow::Owned(vec![1; x.dim(0)?]),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    #[test]
    fn only_a_frozen_product_is_replayed() {
        let w = Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::ones((4, 2), DType::F32, &Device::Cpu).unwrap();
        let frozen = Linear::new(w.clone(), None);
        assert!(frozen.replays());
        // The saved value comes back as it is: the product (all 2s) is not recomputed.
        let saved = Tensor::full(7f32, (4, 3), &Device::Cpu).unwrap();
        let y = frozen.forward_train_replay(&x, &saved).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![7f32; 3]; 4]);

        // Full fine-tuning: the weight is trained, its product is recomputed.
        let trained = Linear::new(Var::from_tensor(&w).unwrap().as_tensor().clone(), None);
        assert!(!trained.replays());
        let y = trained.forward_train_replay(&x, &saved).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![2f32; 3]; 4]);
    }
}
