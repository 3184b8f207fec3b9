//! The linear layer of every projection (`q_proj` ... `down_proj`, `lm_head`).
//!
//! It holds the checkpoint's weight as is (`[out, in]`) and an optional adapter slot: LoRA
//! (issue 4) attaches there through [`Linear::set_adapter`] while the base weight stays
//! shared, so injecting adapters never copies the model.

use std::sync::Arc;

use candle_core::Tensor;

use super::cpu;
use super::error::{CandleContext, Result};
use super::ops;

/// Something added to a linear layer's output, such as a LoRA pair `B(A(x)) * scale`.
pub trait LinearAdapter: Send + Sync + std::fmt::Debug {
    /// Returns `base + adapter(x)`; `x` is the layer's input, `base` its frozen output.
    /// Used by both modes, so it must be differentiable for training.
    fn forward(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor>;
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
        let y = ops::linear(x, &self.weight, self.bias.as_ref())?;
        match &self.adapter {
            Some(a) => a.forward(x, y).ctx("linear adapter"),
            None => Ok(y),
        }
    }

    /// Inference mode for several layers over the same input (q/k/v, gate/up): one fused
    /// kernel pass when none carries an adapter, else one call each.
    pub fn forward_infer_many(
        layers: &[&Linear],
        x: &Tensor,
        groups: &[usize],
    ) -> Result<Vec<Tensor>> {
        if layers.iter().any(|l| l.adapter.is_some()) {
            return layers.iter().map(|l| l.forward_infer(x, groups)).collect();
        }
        let ws: Vec<(&Tensor, Option<&Tensor>)> = layers
            .iter()
            .map(|l| (&l.weight, l.bias.as_ref()))
            .collect();
        cpu::linear::linear_many(x, &ws, groups)
    }

    /// Inference mode: `x` is f32 `[tokens, in]`, `groups` the token count of each sequence
    /// (see [`cpu::linear`]); the CPU kernel reads the weight in its stored dtype.
    pub fn forward_infer(&self, x: &Tensor, groups: &[usize]) -> Result<Tensor> {
        let y = cpu::linear::linear(x, &self.weight, self.bias.as_ref(), groups)?;
        match &self.adapter {
            Some(a) => a.forward(x, y).ctx("linear adapter"),
            None => Ok(y),
        }
    }
}
