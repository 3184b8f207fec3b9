//! AdamW with f32 master weights and f32 moments, whatever the parameter dtype.
//!
//! candle's own AdamW keeps moments in the parameter's dtype, which loses small updates in
//! bf16. Here every trainable parameter has an f32 master copy, f32 `exp_avg`/`exp_avg_sq`
//! and an f32 gradient accumulator; the parameter itself is rewritten (in its dtype) from the
//! master after each step. The update is torch.optim.AdamW's, operation for operation, so
//! runs can be compared with PyTorch and resumed bit-identically.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

/// Hyper-parameters shared by every parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One trainable parameter as the trainer hands it over.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// Its checkpoint name (e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub name: String,
    pub var: Var,
    /// Whether weight decay applies (not for biases and norms, as HF decides).
    pub decay: bool,
    /// Multiplier of the learning rate (LoRA+ raises it for `lora_B`).
    pub lr_scale: f64,
}

/// HF's `get_decay_parameter_names`: no decay for biases and normalisation weights.
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let is_norm = lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || lower.contains("_norm.")
        || lower.ends_with("_norm")
        || lower.split('.').any(|part| part == "norm");
    !(lower.contains("bias") || is_norm)
}

struct ParamState {
    param: Trainable,
    master: Vec<f32>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    grad: Vec<f32>,
}

/// Errors of the optimizer; they name the parameter involved.
#[derive(Debug, thiserror::Error)]
pub enum OptimizerError {
    #[error("parameter {name}: {source}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("optimizer state for {name}: expected {expected} values, found {found}")]
    StateShape {
        name: String,
        expected: usize,
        found: usize,
    },
    #[error("optimizer state has no entry for parameter {name}")]
    MissingState { name: String },
}

fn tensor_err(name: &str) -> impl FnOnce(candle_core::Error) -> OptimizerError + '_ {
    move |source| OptimizerError::Tensor {
        name: name.to_string(),
        source,
    }
}

fn to_f32_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// The optimizer: state for every trainable parameter plus the step counter.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    /// Optimizer steps taken (torch's `state["step"]`).
    step: u64,
}

impl AdamW {
    /// Builds fresh state: master = current value, zero moments.
    pub fn new(params: Vec<Trainable>, config: AdamWConfig) -> Result<Self, OptimizerError> {
        let params = params
            .into_iter()
            .map(|p| {
                let master = to_f32_vec(p.var.as_tensor()).map_err(tensor_err(&p.name))?;
                let n = master.len();
                Ok(ParamState {
                    param: p,
                    master,
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                    grad: vec![0.0; n],
                })
            })
            .collect::<Result<Vec<_>, OptimizerError>>()?;
        Ok(AdamW {
            config,
            params,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Number of trainable values.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.master.len()).sum()
    }

    /// Adds one backward pass's gradients to the accumulators (gradient accumulation).
    /// Returns the names of parameters that received no gradient (the graph did not reach
    /// them — the trainer treats that as a bug worth reporting).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<Vec<String>, OptimizerError> {
        let mut missing = Vec::new();
        for p in &mut self.params {
            let Some(g) = grads.get(p.param.var.as_tensor()) else {
                missing.push(p.param.name.clone());
                continue;
            };
            let g = to_f32_vec(g).map_err(tensor_err(&p.param.name))?;
            if g.len() != p.grad.len() {
                return Err(OptimizerError::StateShape {
                    name: p.param.name.clone(),
                    expected: p.grad.len(),
                    found: g.len(),
                });
            }
            p.grad
                .par_iter_mut()
                .zip(g.par_iter())
                .for_each(|(acc, x)| *acc += x);
        }
        Ok(missing)
    }

    /// The L2 norm of the accumulated gradients, scaled by `scale` (as torch's
    /// clip_grad_norm_ sees them after loss averaging).
    /// Summed in fixed chunks, then in order: rayon's `sum` may combine partial sums in a
    /// different order each run, and a resumed run must clip exactly as the original did.
    pub fn grad_norm(&self, scale: f32) -> f64 {
        let sum: f64 = self
            .params
            .iter()
            .map(|p| {
                p.grad
                    .par_chunks(1 << 14)
                    .map(|chunk| {
                        chunk
                            .iter()
                            .map(|g| {
                                let x = (g * scale) as f64;
                                x * x
                            })
                            .sum::<f64>()
                    })
                    .collect::<Vec<f64>>()
                    .into_iter()
                    .sum::<f64>()
            })
            .sum();
        sum.sqrt()
    }

    /// The accumulated (unscaled) gradient of every parameter, by name.
    pub fn grads(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.params
            .iter()
            .map(|p| (p.param.name.as_str(), p.grad.as_slice()))
    }

    /// One AdamW step at learning rate `lr` on the accumulated gradients multiplied by
    /// `grad_scale` (1/accumulation steps times the clipping coefficient), then clears them.
    pub fn step(&mut self, lr: f64, grad_scale: f32) -> Result<(), OptimizerError> {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2 = 1.0 - beta2.powi(self.step as i32);
        let bias2_sqrt = bias2.sqrt();
        for p in &mut self.params {
            let lr = lr * p.param.lr_scale;
            let decay = if p.param.decay { weight_decay } else { 0.0 };
            // torch: param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1);
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
            // param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            // Scalars are formed in f64 and rounded once, as torch does with Python floats.
            let keep = (1.0 - lr * decay) as f32;
            let (w1, b2, w2) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32);
            let step_size = (lr / bias1) as f32;
            let (bias2_sqrt, eps) = (bias2_sqrt as f32, eps as f32);
            p.master
                .par_iter_mut()
                .zip(p.exp_avg.par_iter_mut())
                .zip(p.exp_avg_sq.par_iter_mut())
                .zip(p.grad.par_iter_mut())
                .for_each(|(((w, m), v), g)| {
                    let grad = *g * grad_scale;
                    *w *= keep;
                    *m += w1 * (grad - *m);
                    *v = *v * b2 + w2 * grad * grad;
                    let denom = v.sqrt() / bias2_sqrt + eps;
                    *w -= step_size * (*m / denom);
                    *g = 0.0;
                });
            write_back(&p.param, &p.master)?;
        }
        Ok(())
    }

    // --- Data parallel (dist/data_parallel.rs): flat views for one collective per step.

    /// Every accumulated gradient concatenated in parameter order.
    pub fn flat_grads(&self) -> Vec<f32> {
        self.params
            .iter()
            .flat_map(|p| p.grad.iter().copied())
            .collect()
    }

    /// Replaces the accumulated gradients with `flat` (the layout of [`Self::flat_grads`]).
    pub fn set_flat_grads(&mut self, flat: &[f32]) {
        let mut at = 0;
        for p in &mut self.params {
            let n = p.grad.len();
            p.grad.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
    }

    /// Every master weight concatenated in parameter order.
    pub fn flat_masters(&self) -> Vec<f32> {
        self.params
            .iter()
            .flat_map(|p| p.master.iter().copied())
            .collect()
    }

    /// Replaces the master weights with `flat` and writes them into the parameters.
    pub fn set_flat_masters(&mut self, flat: &[f32]) -> Result<(), OptimizerError> {
        let mut at = 0;
        for p in &mut self.params {
            let n = p.master.len();
            p.master.copy_from_slice(&flat[at..at + n]);
            at += n;
            write_back(&p.param, &p.master)?;
        }
        Ok(())
    }

    /// Drops accumulated gradients without stepping (e.g. a skipped non-finite step).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.grad.iter_mut().for_each(|g| *g = 0.0);
        }
    }

    /// The state to checkpoint: `(name, kind, values)` with kind master/exp_avg/exp_avg_sq.
    pub fn state(&self) -> impl Iterator<Item = (&str, &'static str, &[f32])> {
        self.params.iter().flat_map(|p| {
            [
                (p.param.name.as_str(), "master", p.master.as_slice()),
                (p.param.name.as_str(), "exp_avg", p.exp_avg.as_slice()),
                (p.param.name.as_str(), "exp_avg_sq", p.exp_avg_sq.as_slice()),
            ]
        })
    }

    /// Restores state saved by `state()` after `step` steps; `lookup(name, kind)` returns
    /// the saved values. The parameters are rewritten from the restored master weights.
    pub fn restore<'a>(
        &mut self,
        step: u64,
        lookup: impl Fn(&str, &str) -> Option<&'a [f32]>,
    ) -> Result<(), OptimizerError> {
        for p in &mut self.params {
            for (kind, dst) in [
                ("master", &mut p.master),
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let src =
                    lookup(&p.param.name, kind).ok_or_else(|| OptimizerError::MissingState {
                        name: format!("{} ({kind})", p.param.name),
                    })?;
                if src.len() != dst.len() {
                    return Err(OptimizerError::StateShape {
                        name: format!("{} ({kind})", p.param.name),
                        expected: dst.len(),
                        found: src.len(),
                    });
                }
                dst.copy_from_slice(src);
            }
            p.grad.iter_mut().for_each(|g| *g = 0.0);
            write_back(&p.param, &p.master)?;
        }
        self.step = step;
        Ok(())
    }
}

/// Rewrites the parameter from its master copy, in the parameter's own dtype.
fn write_back(param: &Trainable, master: &[f32]) -> Result<(), OptimizerError> {
    let var = &param.var;
    let value = Tensor::from_slice(master, var.shape(), var.device())
        .and_then(|t| t.to_dtype(var.dtype()))
        .map_err(tensor_err(&param.name))?;
    var.set(&value).map_err(tensor_err(&param.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn config() -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    #[test]
    fn decay_follows_hf_name_rules() {
        assert!(decays("model.layers.0.self_attn.q_proj.lora_A.weight"));
        assert!(decays("lm_head.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.norm.weight"));
        assert!(!decays("model.layers.0.self_attn.q_norm.weight"));
    }

    /// Two AdamW steps on w = [1, -2, 3] with grads [0.1, 0.2, -0.3] then [0.5, -0.5, 0.0],
    /// lr 0.1; expected values from torch.optim.AdamW(lr=0.1, betas=(0.9, 0.95),
    /// eps=1e-8, weight_decay=0.1) in float32.
    #[test]
    fn matches_torch_adamw() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_slice(&[1.0f32, -2.0, 3.0], 3, &dev)?;
        let mut opt = AdamW::new(
            vec![Trainable {
                name: "w".into(),
                var: var.clone(),
                decay: true,
                lr_scale: 1.0,
            }],
            config(),
        )
        .unwrap();
        for grads in [[0.1f32, 0.2, -0.3], [0.5, -0.5, 0.0]] {
            opt.params[0].grad.copy_from_slice(&grads);
            opt.step(0.1, 1.0).unwrap();
        }
        let got = var.as_tensor().to_vec1::<f32>()?;
        let expected = [0.795_977_f32, -2.015_375_6, 3.107_164_6];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        assert_eq!(opt.steps(), 2);
        assert!(
            opt.params[0].grad.iter().all(|g| *g == 0.0),
            "step clears the gradients"
        );
        Ok(())
    }

    #[test]
    fn bf16_parameters_keep_f32_masters_and_restore_exactly() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let init = Tensor::new(&[1.0f32, 0.5], &dev)?.to_dtype(DType::BF16)?;
        let var = Var::from_tensor(&init)?;
        let mk = |v: &Var| {
            AdamW::new(
                vec![Trainable {
                    name: "w".into(),
                    var: v.clone(),
                    decay: false,
                    lr_scale: 1.0,
                }],
                config(),
            )
            .unwrap()
        };
        let mut opt = mk(&var);
        // Tiny updates below bf16 resolution still accumulate in the master copy.
        for _ in 0..3 {
            opt.params[0].grad.copy_from_slice(&[1.0, 1.0]);
            opt.step(1e-4, 1.0).unwrap();
        }
        assert!(opt.params[0].master[0] < 1.0 && opt.params[0].master[0] > 0.9996);
        assert_eq!(var.dtype(), DType::BF16);

        let saved: Vec<(String, String, Vec<f32>)> = opt
            .state()
            .map(|(n, k, v)| (n.to_string(), k.to_string(), v.to_vec()))
            .collect();
        let other = Var::from_tensor(&init)?;
        let mut resumed = mk(&other);
        resumed
            .restore(opt.steps(), |n, k| {
                saved
                    .iter()
                    .find(|(sn, sk, _)| sn == n && sk == k)
                    .map(|(_, _, v)| v.as_slice())
            })
            .unwrap();
        for o in [&mut opt, &mut resumed] {
            o.params[0].grad.copy_from_slice(&[0.3, -0.2]);
            o.step(1e-3, 0.5).unwrap();
        }
        assert_eq!(
            opt.params[0].master, resumed.params[0].master,
            "resume is bit-identical"
        );
        assert_eq!(
            var.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?,
            other.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn accumulate_sums_and_reports_unreached_parameters() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_slice(&[1.0f32, 2.0], 2, &dev)?;
        let b = Var::from_slice(&[3.0f32], 1, &dev)?;
        let mut opt = AdamW::new(
            vec![
                Trainable {
                    name: "a".into(),
                    var: a.clone(),
                    decay: true,
                    lr_scale: 1.0,
                },
                Trainable {
                    name: "b".into(),
                    var: b.clone(),
                    decay: true,
                    lr_scale: 1.0,
                },
            ],
            config(),
        )
        .unwrap();
        for _ in 0..2 {
            let loss = (a.as_tensor() * 3.0)?.sum_all()?;
            let grads = loss.backward()?;
            let missing = opt.accumulate(&grads).unwrap();
            assert_eq!(missing, vec!["b".to_string()]);
        }
        assert_eq!(opt.params[0].grad, vec![6.0, 6.0]);
        assert!((opt.grad_norm(0.5) - (18.0f64).sqrt()).abs() < 1e-9);
        Ok(())
    }
}
