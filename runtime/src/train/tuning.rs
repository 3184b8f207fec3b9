//! What trains: LoRA adapters (`--train_type lora`, or `--adapters` to keep training
//! existing ones) or the model's own parameters (`--train_type full` with
//! `--freeze_parameters*` / `--trainable_parameters`), and how each is saved.

use std::path::Path;

use kubeswift_args::Args;

use crate::model::CausalLm;
use crate::train::optimizer::{Trainable, decays};
use crate::tuner::lora::{LoraAdapters, LoraError};
use crate::tuner::lora_config::{LoraConfig, PeftLoraConfig};

/// The trainable part of a run.
pub enum Tuning {
    Lora {
        adapters: Box<LoraAdapters>,
        lorap_lr_ratio: Option<f64>,
    },
    Full {
        params: Vec<(String, candle_core::Var)>,
    },
}

/// A tuning setting we cannot honour, or a failure applying it; names the argument.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("--train_type {0}: not supported yet (lora and full are)")]
    TrainType(String),
    #[error("--{arg}: {reason}")]
    Invalid { arg: &'static str, reason: String },
    #[error(transparent)]
    Lora(Box<LoraError>),
    #[error(transparent)]
    Model(Box<crate::model::ModelError>),
    #[error("model weights {path}: {message}")]
    Save { path: String, message: String },
}

impl From<LoraError> for TuningError {
    fn from(e: LoraError) -> Self {
        TuningError::Lora(Box::new(e))
    }
}

impl From<crate::model::ModelError> for TuningError {
    fn from(e: crate::model::ModelError) -> Self {
        TuningError::Model(Box::new(e))
    }
}

/// ms-swift's selection for full fine-tuning: freeze the `freeze_parameters` prefixes and
/// the first `freeze_parameters_ratio` of the parameters (by element count, in module
/// order); `trainable_parameters` prefixes train whatever froze them.
pub fn full_selection(
    names_and_sizes: &[(String, usize)],
    freeze: &[String],
    ratio: f64,
    trainable: &[String],
) -> Vec<String> {
    let total: usize = names_and_sizes.iter().map(|(_, n)| n).sum();
    let freeze_budget = (total as f64 * ratio) as usize;
    let mut cumulative = 0usize;
    let mut out = Vec::new();
    for (name, n) in names_and_sizes {
        cumulative += n;
        // bisect_right over the cumulative sizes: frozen while the running sum fits.
        let by_ratio = ratio > 0.0 && cumulative <= freeze_budget;
        let by_prefix = freeze.iter().any(|p| name.starts_with(p.as_str()));
        let forced = trainable.iter().any(|p| name.starts_with(p.as_str()));
        if forced || !(by_ratio || by_prefix) {
            out.push(name.clone());
        }
    }
    out
}

impl Tuning {
    /// Applies `--train_type` (and `--adapters`) to a loaded model.
    pub fn from_args(
        args: &Args,
        model: &mut CausalLm,
        base_model: &str,
    ) -> Result<Self, TuningError> {
        let train_type = args.str("train_type").unwrap_or("lora");
        let adapters = args.strings("adapters");
        match train_type {
            "lora" => {
                let cfg = LoraConfig::from_args(args).map_err(LoraError::from)?;
                let adapters = match adapters.as_slice() {
                    [] => {
                        let seed = args.int("seed").unwrap_or(42) as u64;
                        LoraAdapters::inject(model, &cfg, seed, base_model)?
                    }
                    [one] => LoraAdapters::load(model, Path::new(one), true)?,
                    _ => {
                        return Err(TuningError::Invalid {
                            arg: "adapters",
                            reason: "training continues one adapter at a time".into(),
                        });
                    }
                };
                Ok(Tuning::Lora {
                    adapters: Box::new(adapters),
                    lorap_lr_ratio: cfg.lorap_lr_ratio,
                })
            }
            "full" => {
                if !adapters.is_empty() {
                    return Err(TuningError::Invalid {
                        arg: "adapters",
                        reason: "cannot be combined with --train_type full".into(),
                    });
                }
                let sizes: Vec<(String, usize)> = model
                    .named_parameters()
                    .iter()
                    .map(|(n, t)| (n.clone(), t.elem_count()))
                    .collect();
                let chosen = full_selection(
                    &sizes,
                    &args.strings("freeze_parameters"),
                    args.float("freeze_parameters_ratio").unwrap_or(0.0),
                    &args.strings("trainable_parameters"),
                );
                if chosen.is_empty() {
                    return Err(TuningError::Invalid {
                        arg: "freeze_parameters",
                        reason: "every parameter is frozen; nothing would train".into(),
                    });
                }
                let params = model.make_trainable(|n| chosen.iter().any(|c| c == n))?;
                Ok(Tuning::Full { params })
            }
            other => Err(TuningError::TrainType(other.to_string())),
        }
    }

    /// The optimizer's parameters.
    pub fn trainables(&self) -> Vec<Trainable> {
        match self {
            Tuning::Lora {
                adapters,
                lorap_lr_ratio,
            } => adapters.trainables(*lorap_lr_ratio),
            Tuning::Full { params } => params
                .iter()
                .map(|(name, var)| Trainable {
                    name: name.clone(),
                    var: var.clone(),
                    decay: decays(name),
                    lr_scale: 1.0,
                })
                .collect(),
        }
    }

    /// Switches LoRA dropout on (training) or off (evaluation) and seeds its masks.
    pub fn set_mode(&self, training: bool, seed: u64) {
        if let Tuning::Lora { adapters, .. } = self {
            adapters.control.set_training(training);
            adapters.control.set_seed(seed);
        }
    }

    /// Refuses to resume from a checkpoint that was trained as something else: a LoRA
    /// adapter into a full fine-tune or the reverse, or an adapter whose rank, alpha,
    /// targets, dropout, bias, modules_to_save, rsLoRA or DoRA differ from this run's
    /// (ms-swift reads the checkpoint's adapter config; changing them mid-run would drop
    /// trained modules or rescale them). Checked before any state is read, so the error
    /// names the setting rather than an optimizer tensor's shape.
    pub fn check_checkpoint(&self, dir: &Path) -> Result<(), TuningError> {
        let adapter_config = dir.join(crate::tuner::lora::ADAPTER_CONFIG);
        let invalid = |reason: String| TuningError::Invalid {
            arg: "resume_from_checkpoint",
            reason: format!("{}: {reason}", dir.display()),
        };
        match self {
            Tuning::Lora { adapters, .. } => {
                if !adapter_config.is_file() {
                    if dir.join("model.safetensors").is_file() {
                        return Err(invalid(
                            "the checkpoint is a full fine-tune (model.safetensors, no \
                             adapter_config.json); this run is --train_type lora"
                                .into(),
                        ));
                    }
                    return Ok(());
                }
                let saved =
                    PeftLoraConfig::load(&adapter_config).map_err(|e| invalid(e.to_string()))?;
                let differences = saved.differences_from(&adapters.peft);
                if !differences.is_empty() {
                    return Err(invalid(format!(
                        "its adapter_config.json was trained with other LoRA settings ({}); \
                         resume with the settings it was trained with",
                        differences.join("; ")
                    )));
                }
                Ok(())
            }
            Tuning::Full { .. } if adapter_config.is_file() => Err(invalid(
                "the checkpoint is a LoRA adapter (adapter_config.json); this run is \
                 --train_type full"
                    .into(),
            )),
            Tuning::Full { .. } => Ok(()),
        }
    }

    /// Sets the trainable weights from a checkpoint folder written by [`Self::save`].
    pub fn load_weights(&self, dir: &Path) -> Result<(), TuningError> {
        let file = match self {
            Tuning::Lora { .. } => dir.join(crate::tuner::lora::ADAPTER_WEIGHTS),
            Tuning::Full { .. } => dir.join("model.safetensors"),
        };
        let err = |message: String| TuningError::Save {
            path: file.display().to_string(),
            message,
        };
        let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        for t in self.trainables() {
            let value = tensors
                .get(&t.name)
                .ok_or_else(|| err(format!("has no tensor {}", t.name)))?;
            if value.dims() != t.var.dims() {
                return Err(err(format!(
                    "{}: shape {:?}, the model has {:?}",
                    t.name,
                    value.dims(),
                    t.var.dims()
                )));
            }
            value
                .to_dtype(t.var.dtype())
                .and_then(|v| v.to_device(t.var.device()))
                .and_then(|v| t.var.set(&v))
                .map_err(|e| err(format!("{}: {e}", t.name)))?;
        }
        Ok(())
    }

    /// Writes the trained weights into `dir`: a PEFT adapter folder, or (full) a Hugging
    /// Face model folder with the base model's config and tokenizer files.
    pub fn save(&self, dir: &Path, model: &CausalLm, model_dir: &Path) -> Result<(), TuningError> {
        match self {
            Tuning::Lora { adapters, .. } => Ok(adapters.save(dir)?),
            Tuning::Full { .. } => save_full(dir, model, model_dir),
        }
    }
}

fn save_full(dir: &Path, model: &CausalLm, model_dir: &Path) -> Result<(), TuningError> {
    let err = |path: &Path, message: String| TuningError::Save {
        path: path.display().to_string(),
        message,
    };
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = model
        .named_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let weights = dir.join("model.safetensors");
    crate::storage::weights_file::save(&tensors, &weights)
        .map_err(|e| err(&weights, e.to_string()))?;
    // Everything else a model folder needs (config, tokenizer, generation config).
    let entries = std::fs::read_dir(model_dir).map_err(|e| err(model_dir, e.to_string()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name.ends_with(".safetensors")
            || name.ends_with(".bin")
            || name == "model.safetensors.index.json"
            || name.starts_with("reference.");
        if path.is_file() && !is_weights {
            std::fs::copy(&path, dir.join(&name)).map_err(|e| err(&path, e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Vec<(String, usize)> {
        ["embed", "layers.0.a", "layers.0.b", "layers.1.a", "norm"]
            .iter()
            .map(|n| (n.to_string(), 10))
            .collect()
    }

    #[test]
    fn full_selection_follows_ms_swift_precedence() {
        let all = |v: Vec<String>| v.join(",");
        assert_eq!(
            all(full_selection(&sizes(), &[], 0.0, &[])),
            "embed,layers.0.a,layers.0.b,layers.1.a,norm"
        );
        assert_eq!(
            all(full_selection(&sizes(), &["layers.0".into()], 0.0, &[])),
            "embed,layers.1.a,norm"
        );
        // 40% of 50 elements = the first two parameters.
        assert_eq!(
            all(full_selection(&sizes(), &[], 0.4, &[])),
            "layers.0.b,layers.1.a,norm"
        );
        // trainable_parameters wins over both.
        assert_eq!(
            all(full_selection(
                &sizes(),
                &["layers".into()],
                1.0,
                &["layers.0.b".into()]
            )),
            "layers.0.b"
        );
    }
}
