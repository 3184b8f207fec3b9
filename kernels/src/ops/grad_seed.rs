//! `grad_seed(y, g)`: a scalar whose backward hands `g` to `y` as its gradient.
//!
//! Gradient checkpointing backpropagates an incoming gradient `g` through a recomputed
//! piece of the graph. The textbook surrogate, `sum(y * g)`, has the right gradient but
//! costs three `y`-sized passes and allocations (the product, the broadcast of the sum's
//! gradient, and candle's gradient for `g` itself, which it computes even though `g`
//! tracks nothing). Here the forward is a zero scalar and the backward returns `g`
//! unchanged (a reference, no copy).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::error::shape_err;
use crate::storage::owned;

const OP: &str = "grad_seed";

/// A scalar (f32, value 0, never meant to be read) whose gradient with respect to `y` is
/// `g`: `grad_seed(y, g).backward()` backpropagates `g` from `y`. `g` must have `y`'s shape
/// and dtype.
pub fn grad_seed(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if g.shape() != y.shape() || g.dtype() != y.dtype() {
        return Err(shape_err(
            OP,
            "g",
            g.shape(),
            format!("{:?} in {:?} (y's shape and dtype)", y.shape(), y.dtype()),
        ));
    }
    if !y.device().is_cpu() {
        // The op's forward is CPU-only; elsewhere the surrogate costs its extra passes.
        return y.mul(g)?.to_dtype(candle_core::DType::F32)?.sum_all();
    }
    y.apply_op1(GradSeed { g: g.detach() })
}

struct GradSeed {
    g: Tensor,
}

impl CustomOp1 for GradSeed {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((owned(vec![0f32]), Shape::from(())))
    }

    fn bwd(&self, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // As the root of `backward()`, `grad` is its seed, 1, and `y`'s gradient is `g`
        // itself; anything else scales it.
        let scale = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if scale == 1.0 {
            return Ok(Some(self.g.clone()));
        }
        Ok(Some(self.g.affine(scale, 0.0)?))
    }
}
