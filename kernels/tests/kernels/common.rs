//! Helpers shared by the kernel tests.

use candle_core::{DType, Device, Result, Tensor, Var, backprop::GradStore};
use kubeswift_kernels::reference::random;

pub const F32_TOL: f64 = 1e-5;
pub const FD_TOL: f64 = 1e-3;
pub const BF16_TOL: f64 = 2e-2;

pub fn cpu() -> Device {
    Device::Cpu
}

/// A deterministic tensor of f32 values in `[-scale, scale)`.
pub fn rand(seed: u64, dims: &[usize], scale: f32) -> Tensor {
    random(seed, dims, scale, &cpu()).unwrap()
}

pub fn var(t: &Tensor) -> Var {
    Var::from_tensor(t).unwrap()
}

/// `max |got - want| <= tol * max(max |want|, 1e-3)`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let w = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max error {worst:e} at {at} ({} vs {}) exceeds {tol:e} x scale {scale:e}",
        g[at],
        w[at]
    );
}

/// The gradient of a `Var`, failing the test if there is none.
pub fn grad(grads: &GradStore, v: &Var) -> Tensor {
    grads
        .get(v.as_tensor())
        .expect("no gradient for a variable")
        .clone()
}

/// A scalar loss `sum(y * r)` with fixed random weights `r` (so every output element's
/// gradient differs), summed in f64.
pub fn weighted_sum(y: &Tensor, seed: u64) -> Result<Tensor> {
    let r = random(seed, y.dims(), 1.0, y.device())?;
    (y.to_dtype(DType::F32)? * r)?
        .to_dtype(DType::F64)?
        .sum_all()
}

/// Checks `<grad, u>` against the central difference `(L(x + eps u) - L(x - eps u)) / 2 eps`
/// along three random directions `u`, where `loss` evaluates L with input `index` replaced.
pub fn check_finite_difference(
    what: &str,
    inputs: &[Tensor],
    index: usize,
    grad: &Tensor,
    loss: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    // The kernels are f32: a step much below 1e-2 drowns the difference in output rounding
    // (~1e-7 relative per element); the O(eps^2) truncation error stays far below 1e-3.
    let eps = 1e-2;
    for seed in 0..3u64 {
        let u = random(1000 + seed, inputs[index].dims(), 1.0, &cpu()).unwrap();
        let at = |sign: f64| -> f64 {
            let mut xs = inputs.to_vec();
            xs[index] = (&inputs[index] + (&u * (sign * eps)).unwrap()).unwrap();
            loss(&xs)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
        let analytic = (grad.to_dtype(DType::F64).unwrap() * u.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let err = (numeric - analytic).abs() / analytic.abs().max(numeric.abs()).max(1e-2);
        assert!(
            err <= FD_TOL,
            "{what}: finite difference {numeric} vs gradient {analytic} (relative {err:e})"
        );
    }
}

/// The same values rounded to bf16.
pub fn bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap()
}

/// bf16 values widened back to f32 (the exact inputs a bf16 kernel saw).
pub fn widened(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}
