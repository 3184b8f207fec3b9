//! DoRA (`--use_dora true`, weight-decomposed LoRA) as PEFT's `DoraLinearLayer` computes
//! it (peft >= 0.12): each adapted linear layer gets a trainable magnitude `m` (`[out]`,
//! PEFT's `lora_magnitude_vector`) and, with `n = ||W + scale B A||` per output row,
//!
//! `y = x W^T + b + (m/n - 1) * (x' W^T) + (m/n) * scale * B A x'`
//!
//! where `x'` is the adapter's (dropped-out) input and `b` the layer's bias, which is not
//! scaled. `n` is computed from detached values: no gradient flows through it, as in
//! PEFT. Without dropout (or in evaluation) `x' = x` and this is `(m/n) * (x W^T + scale
//! B A x) + b`, which is what training, inference and the merge
//! `W' = (m / ||W + scale B A||)[:, None] * (W + scale B A)` compute.

use candle_core::{D, DType, Tensor, Var};
use kubeswift_kernels::{LoraDropout, dropout_factors, frozen_linear, lora_linear};

/// The name PEFT gives the magnitude in a layer's adapter state.
pub const MAGNITUDE: &str = "lora_magnitude_vector";

/// PEFT's key for a layer's magnitude in `adapter_model.safetensors`:
/// `base_model.model.<module>.lora_magnitude_vector` (PEFT strips the `.weight` its module
/// has, so the file format stays what it was before its DoRA refactor).
pub fn magnitude_key(module_path: &str) -> String {
    format!("base_model.model.{module_path}.{MAGNITUDE}")
}

/// `||W + scale * B A||_2` over the input dim, per output row (`[out]`, f32), a value.
pub fn weight_norm(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let full = merged_weight(w, a, b, scale, None)?;
    full.sqr()?.sum(D::Minus1)?.sqrt()
}

/// The DoRA part of one adapted layer.
#[derive(Debug)]
pub struct Dora {
    /// `lora_magnitude_vector`, `[out]`.
    pub magnitude: Var,
    /// The layer's base weight `[out, in]` (shared with it, not a copy), for the norm.
    weight: Tensor,
    /// The layer's own bias, which the inference kernel's output already holds.
    base_bias: Option<Tensor>,
    /// For an adapter loaded to serve (its weights never change): `m / n`, computed once,
    /// because the norm costs a full weight-sized pass per call.
    frozen_gain: Option<Tensor>,
}

impl Dora {
    /// DoRA over the layer with weight `weight` and bias `base_bias`.
    pub fn new(magnitude: Var, weight: Tensor, base_bias: Option<Tensor>) -> Self {
        Dora {
            magnitude,
            weight,
            base_bias,
            frozen_gain: None,
        }
    }

    /// `m / ||W + scale B A||`, f32 `[out]`; differentiable in `m` only.
    pub fn gain(&self, a: &Tensor, b: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
        if let Some(g) = &self.frozen_gain {
            return Ok(g.clone());
        }
        let n = weight_norm(&self.weight, a, b, scale)?;
        self.magnitude.as_tensor().to_dtype(DType::F32)? / n
    }

    /// Computes the gain once for an adapter that will not train.
    pub fn freeze(&mut self, a: &Tensor, b: &Tensor, scale: f64) -> candle_core::Result<()> {
        self.frozen_gain = None;
        self.frozen_gain = Some(self.gain(a, b, scale)?.detach());
        Ok(())
    }

    /// Training mode: the whole layer, differentiable in `x`, `a`, `b`, `m` and `bias`.
    /// With dropout, PEFT recomputes the base on the dropped-out input for the `(m/n - 1)`
    /// term, so `y = (x - x') W^T + (m/n) * (x' W^T + scale B A x') + b`.
    pub fn forward_train(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        bias: Option<&Tensor>,
        dropout: Option<LoraDropout>,
    ) -> candle_core::Result<Tensor> {
        let gain = self.gain(a, b, scale)?;
        let (adapter_input, rest) = match dropout.filter(|d| d.p > 0.0) {
            None => (x.clone(), None),
            Some(d) => {
                let dropped = (x * dropout_mask(d, x)?)?;
                let rest = frozen_linear(&(x - &dropped)?, &self.weight, None)?;
                (dropped, Some(rest))
            }
        };
        let z = lora_linear(&adapter_input, &self.weight, None, a, b, scale)?;
        let mut y = z.broadcast_mul(&gain.to_dtype(z.dtype())?)?;
        if let Some(rest) = rest {
            y = (y + rest)?;
        }
        match bias {
            Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    /// Inference mode: `base` (f32 `[N, out]`) is `x W^T + b0` with the layer's own bias;
    /// returns `(m/n) * (x W^T + scale B A x) + bias`, `bias` the trained one or `b0`.
    pub fn forward_infer(
        &self,
        x: &Tensor,
        base: Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        trained_bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let gain = self.gain(a, b, scale)?;
        let a = a.to_dtype(DType::F32)?;
        let b = b.to_dtype(DType::F32)?;
        let delta = (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?;
        let unbiased = match &self.base_bias {
            Some(b0) => base.broadcast_sub(&b0.to_dtype(DType::F32)?)?,
            None => base,
        };
        let y = (unbiased + delta)?.broadcast_mul(&gain)?;
        match trained_bias.or(self.base_bias.as_ref()) {
            Some(bias) => y.broadcast_add(&bias.to_dtype(DType::F32)?),
            None => Ok(y),
        }
    }
}

/// The merged weight, f32: `W + scale B A`, and with DoRA's magnitude `m`
/// `(m / ||W + scale B A||)[:, None] * (W + scale B A)` (PEFT's merge).
///
/// A value, not differentiable: A, B and m are usually variables, and a result computed
/// from them would hold its backprop graph, which keeps `W` and every intermediate
/// `[out, in]` product alive for as long as the result lives (merging SmolLM2-135M's
/// adapter peaked at 1.91 GB instead of 0.67).
pub fn merged_weight(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    magnitude: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let a = a.detach().to_dtype(DType::F32)?;
    let b = b.detach().to_dtype(DType::F32)?;
    let full = (w.detach().to_dtype(DType::F32)? + (b.matmul(&a)? * scale)?)?;
    match magnitude {
        None => Ok(full),
        Some(m) => {
            let n = full.sqr()?.sum(D::Minus1)?.sqrt()?;
            let gain = (m.detach().to_dtype(DType::F32)? / n)?;
            full.broadcast_mul(&gain.unsqueeze(1)?)
        }
    }
}

/// `keep / (1 - p)` or 0 per element of `x`, in `x`'s dtype: the LoRA kernel's own mask
/// (a hash of the seed and the element index), so it is the same whenever a layer is
/// recomputed (gradient checkpointing) with the same seed.
fn dropout_mask(d: LoraDropout, x: &Tensor) -> candle_core::Result<Tensor> {
    let values = dropout_factors(x.elem_count(), d);
    Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::Device;

    fn rand(shape: (usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32 + 1.0) * 0.7 + seed as f32 * 1.3).sin())
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    struct Case {
        x: Var,
        w: Tensor,
        bias: Tensor,
        a: Var,
        b: Var,
        m: Var,
        scale: f64,
    }

    /// in 5, out 4, r 2, 6 rows; a magnitude away from the norm so the gain is not 1.
    fn case() -> Case {
        let w = rand((4, 5), 1);
        let a = Var::from_tensor(&rand((2, 5), 2)).unwrap();
        let b = Var::from_tensor(&(rand((4, 2), 3) * 0.5).unwrap()).unwrap();
        let n = weight_norm(&w, a.as_tensor(), b.as_tensor(), 2.0).unwrap();
        let m = (n * Tensor::new(&[0.8f32, 1.1, 1.3, 0.95], &Device::Cpu).unwrap()).unwrap();
        Case {
            x: Var::from_tensor(&rand((6, 5), 4)).unwrap(),
            w,
            bias: Tensor::new(&[0.1f32, -0.2, 0.3, 0.05], &Device::Cpu).unwrap(),
            a,
            b,
            m: Var::from_tensor(&m).unwrap(),
            scale: 2.0,
        }
    }

    /// PEFT's formula with plain differentiable ops:
    /// `x W^T + b + (g - 1)(x' W^T) + g * scale * x' A^T B^T`, `g = m / n` (n detached).
    fn reference(c: &Case, mask: Option<&Tensor>) -> Tensor {
        let x = c.x.as_tensor();
        let n = weight_norm(&c.w, c.a.as_tensor(), c.b.as_tensor(), c.scale).unwrap();
        let g = (c.m.as_tensor() / n).unwrap();
        let xd = match mask {
            Some(mask) => (x * mask).unwrap(),
            None => x.clone(),
        };
        let base = x.matmul(&c.w.t().unwrap()).unwrap();
        let base_d = xd.matmul(&c.w.t().unwrap()).unwrap();
        let lora = (xd
            .matmul(&c.a.as_tensor().t().unwrap())
            .unwrap()
            .matmul(&c.b.as_tensor().t().unwrap())
            .unwrap()
            * c.scale)
            .unwrap();
        let g1 = (&g - 1.0).unwrap();
        (base + base_d.broadcast_mul(&g1).unwrap() + lora.broadcast_mul(&g).unwrap())
            .unwrap()
            .broadcast_add(&c.bias)
            .unwrap()
    }

    /// Values and the gradients of `sum(y * r)` for x, A, B and m.
    fn grads(c: &Case, y: &Tensor) -> Vec<Tensor> {
        let r = rand((6, 4), 9);
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        [
            c.x.as_tensor(),
            c.a.as_tensor(),
            c.b.as_tensor(),
            c.m.as_tensor(),
        ]
        .iter()
        .map(|v| g.get(v).unwrap().clone())
        .collect()
    }

    #[test]
    fn training_forward_and_gradients_match_peft_formula_with_and_without_dropout() {
        for p in [0.0f32, 0.4] {
            let c = case();
            let d = LoraDropout { p, seed: 17 };
            let dora = Dora::new(c.m.clone(), c.w.clone(), Some(c.bias.clone()));
            let ours = dora
                .forward_train(
                    c.x.as_tensor(),
                    c.a.as_tensor(),
                    c.b.as_tensor(),
                    c.scale,
                    Some(&c.bias),
                    Some(d),
                )
                .unwrap();
            let mask = (p > 0.0).then(|| dropout_mask(d, c.x.as_tensor()).unwrap());
            if let Some(mask) = &mask {
                let dropped: f32 = mask
                    .eq(0f32)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!((0.2..0.6).contains(&dropped), "dropped {dropped}");
            }
            let reference = reference(&c, mask.as_ref());
            assert!(max_diff(&ours, &reference) < 1e-5, "p {p}");
            let (g_ours, g_ref) = (grads(&c, &ours), grads(&c, &reference));
            for (i, (o, r)) in g_ours.iter().zip(&g_ref).enumerate() {
                let d = max_diff(o, r);
                assert!(d < 1e-4, "p {p}: gradient {i} differs by {d}");
                assert!(
                    max_diff(r, &r.zeros_like().unwrap()) > 1e-3,
                    "gradient {i} is zero"
                );
            }
        }
    }

    #[test]
    fn the_norm_gets_no_gradient() {
        // With m = n, g is 1 but d/dB still only sees g * scale * x A^T, never dn/dB.
        let c = case();
        let n = weight_norm(&c.w, c.a.as_tensor(), c.b.as_tensor(), c.scale).unwrap();
        c.m.set(&n).unwrap();
        let dora = Dora::new(c.m.clone(), c.w.clone(), None);
        let y = dora
            .forward_train(
                c.x.as_tensor(),
                c.a.as_tensor(),
                c.b.as_tensor(),
                c.scale,
                None,
                None,
            )
            .unwrap();
        let plain = lora_linear(
            c.x.as_tensor(),
            &c.w,
            None,
            c.a.as_tensor(),
            c.b.as_tensor(),
            c.scale,
        )
        .unwrap();
        assert!(max_diff(&y, &plain) < 1e-5);
        let r = rand((6, 4), 9);
        let db = |y: &Tensor| {
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(c.b.as_tensor()).unwrap().clone()
        };
        assert!(max_diff(&db(&y), &db(&plain)) < 1e-5, "dB follows the norm");
    }

    #[test]
    fn inference_and_merge_equal_the_training_forward() {
        let c = case();
        let trained_bias = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let mut dora = Dora::new(c.m.clone(), c.w.clone(), Some(c.bias.clone()));
        let (x, a, b) = (c.x.as_tensor(), c.a.as_tensor(), c.b.as_tensor());
        for bias in [None, Some(&trained_bias)] {
            let train = dora
                .forward_train(x, a, b, c.scale, Some(bias.unwrap_or(&c.bias)), None)
                .unwrap();
            let base = x
                .matmul(&c.w.t().unwrap())
                .unwrap()
                .broadcast_add(&c.bias)
                .unwrap();
            let infer = dora.forward_infer(x, base, a, b, c.scale, bias).unwrap();
            assert!(max_diff(&train, &infer) < 1e-5);
            let merged = merged_weight(&c.w, a, b, c.scale, Some(c.m.as_tensor())).unwrap();
            let via_merge = x
                .matmul(&merged.t().unwrap())
                .unwrap()
                .broadcast_add(bias.unwrap_or(&c.bias))
                .unwrap();
            assert!(max_diff(&train, &via_merge) < 1e-5);
        }
        // A frozen gain is the live one, and survives a change of m (serving never trains).
        let live = dora.gain(a, b, c.scale).unwrap();
        dora.freeze(a, b, c.scale).unwrap();
        c.m.set(&c.m.as_tensor().ones_like().unwrap()).unwrap();
        assert_eq!(max_diff(&dora.gain(a, b, c.scale).unwrap(), &live), 0.0);
    }
}
