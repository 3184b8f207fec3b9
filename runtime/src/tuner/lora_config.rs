//! LoRA settings: the typed view of ms-swift's LoRA arguments and PEFT's
//! `adapter_config.json`, so adapters move between kubeswift, PEFT and ms-swift both ways.

use std::path::Path;

use kubeswift_args::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which modules get an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Every linear layer except the output head (`--target_modules all-linear`).
    AllLinear,
    /// Module names; a module matches if its path equals a name or ends with `.name` (PEFT).
    Names(Vec<String>),
    /// A regex the whole module path must match (`--target_regex`, PEFT's string form).
    Regex(String),
}

/// LoRA initialisation (`--init_weights`).
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Kaiming-uniform A, zero B (PEFT's `true`).
    Default,
    /// A and B both random: the adapter changes the output from the start (PEFT's `false`).
    Random,
    /// Gaussian A scaled by 1/r, zero B.
    Gaussian,
    /// PiSSA: A, B from the principal singular vectors, removed from the base weight
    /// (exact SVD).
    Pissa,
    /// `pissa_niter_N`: PiSSA from a randomized SVD with N subspace iterations.
    PissaNiter(usize),
}

impl Init {
    /// Reads PEFT's `init_lora_weights` (also ms-swift's `--init_weights`).
    pub fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(true) => Some(Init::Default),
            Value::Bool(false) => Some(Init::Random),
            Value::String(s) if s == "gaussian" => Some(Init::Gaussian),
            Value::String(s) if s == "pissa" => Some(Init::Pissa),
            Value::String(s) => s
                .strip_prefix("pissa_niter_")
                .and_then(|n| n.parse().ok())
                .map(Init::PissaNiter),
            _ => None,
        }
    }

    /// PEFT's `init_lora_weights` value.
    pub fn to_value(&self) -> Value {
        match self {
            Init::Default => Value::Bool(true),
            Init::Random => Value::Bool(false),
            Init::Gaussian => Value::from("gaussian"),
            Init::Pissa => Value::from("pissa"),
            Init::PissaNiter(n) => Value::from(format!("pissa_niter_{n}")),
        }
    }

    pub fn is_pissa(&self) -> bool {
        matches!(self, Init::Pissa | Init::PissaNiter(_))
    }
}

/// The LoRA hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `--lora_bias all`: biases of adapted layers train too.
    pub train_bias: bool,
    /// `--lora_dtype`; `None` follows the model.
    pub dtype: Option<String>,
    pub targets: Targets,
    pub modules_to_save: Vec<String>,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// LoRA+: the learning rate of `lora_B` is this many times that of `lora_A`.
    pub lorap_lr_ratio: Option<f64>,
    pub init: Init,
}

/// A LoRA setting we cannot honour; names the argument.
#[derive(Debug, thiserror::Error)]
pub enum LoraConfigError {
    #[error("--{name} {value}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("adapter config {path}: {message}")]
    File { path: String, message: String },
}

impl LoraConfig {
    /// The scale applied to `B(A(x))`: alpha/r, or alpha/sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Reads the LoRA arguments of a training command.
    pub fn from_args(args: &Args) -> Result<Self, LoraConfigError> {
        let targets = match args.str("target_regex") {
            Some(re) => {
                regex::Regex::new(re).map_err(|e| LoraConfigError::Invalid {
                    name: "target_regex",
                    value: re.to_string(),
                    reason: e.to_string(),
                })?;
                Targets::Regex(re.to_string())
            }
            None => {
                let names = args.strings("target_modules");
                // ms-swift's other group names: adapters on embeddings, norms or MoE routers.
                if let Some(group) = names
                    .iter()
                    .find(|n| n.starts_with("all-") && *n != "all-linear")
                {
                    return Err(LoraConfigError::Invalid {
                        name: "target_modules",
                        value: group.clone(),
                        reason: "not supported yet (all-linear and module names are)".into(),
                    });
                }
                if names.iter().any(|n| n == "all-linear") {
                    Targets::AllLinear
                } else {
                    Targets::Names(names)
                }
            }
        };
        let value = args.get("init_weights");
        let init = Init::from_value(value).ok_or_else(|| LoraConfigError::Invalid {
            name: "init_weights",
            value: value.to_string(),
            reason: "not supported yet (true, false, gaussian, pissa, pissa_niter_N are)".into(),
        })?;
        Ok(LoraConfig {
            rank: args.int("lora_rank").unwrap_or(8).max(1) as usize,
            alpha: args.int("lora_alpha").unwrap_or(32) as f64,
            dropout: args.float("lora_dropout").unwrap_or(0.0),
            train_bias: args.str("lora_bias") == Some("all"),
            dtype: args.str("lora_dtype").map(str::to_string),
            targets,
            modules_to_save: args.strings("modules_to_save"),
            use_rslora: args.bool("use_rslora"),
            use_dora: args.bool("use_dora"),
            lorap_lr_ratio: args.float("lorap_lr_ratio"),
            init,
        })
    }

    /// Whether the linear layer at `path` (e.g. `model.layers.0.self_attn.q_proj`) gets an
    /// adapter. `is_output_head` marks `lm_head`, which all-linear skips.
    pub fn targets_module(&self, path: &str, is_output_head: bool) -> bool {
        match &self.targets {
            Targets::AllLinear => !is_output_head,
            Targets::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            Targets::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map(|r| r.is_match(path))
                .unwrap_or(false),
        }
    }

    /// PEFT's `adapter_config.json`; `targets` are the module names actually adapted
    /// (ms-swift resolves all-linear to the list before saving).
    pub fn to_peft(&self, base_model: &str, targets: Vec<String>) -> PeftLoraConfig {
        let target_modules = match &self.targets {
            Targets::Regex(re) => Value::String(re.clone()),
            _ => Value::from(targets),
        };
        PeftLoraConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model.to_string()),
            r: self.rank,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            bias: if self.train_bias { "all" } else { "none" }.into(),
            target_modules,
            modules_to_save: (!self.modules_to_save.is_empty())
                .then(|| self.modules_to_save.clone()),
            use_rslora: self.use_rslora,
            use_dora: self.use_dora,
            init_lora_weights: self.init.to_value(),
            fan_in_fan_out: false,
            inference_mode: true,
            rank_pattern: serde_json::Map::new(),
            alpha_pattern: serde_json::Map::new(),
            revision: None,
        }
    }
}

/// The fields of PEFT's LoraConfig that kubeswift writes and reads. Unknown fields in a PEFT
/// file are ignored on read; those we cannot honour are refused in `check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "default_bias")]
    pub bias: String,
    pub target_modules: Value,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: Value,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, Value>,
    #[serde(default)]
    pub revision: Option<String>,
}

fn default_bias() -> String {
    "none".into()
}

fn default_init() -> Value {
    Value::Bool(true)
}

impl PeftLoraConfig {
    /// The settings that shape or scale a trained adapter where `self` (a checkpoint's) and
    /// `run` (what this run would train) disagree, as `name: checkpoint X, this run Y`.
    /// Resuming across any of them would drop trained modules or change what they compute.
    pub fn differences_from(&self, run: &PeftLoraConfig) -> Vec<String> {
        fn targets(v: &Value) -> String {
            match v {
                Value::Array(names) => {
                    let mut names: Vec<String> = names
                        .iter()
                        .map(|n| n.as_str().map_or_else(|| n.to_string(), String::from))
                        .collect();
                    names.sort();
                    names.dedup();
                    names.join(" ")
                }
                Value::String(re) => format!("regex {re}"),
                other => other.to_string(),
            }
        }
        let saves = |m: &Option<Vec<String>>| {
            let mut m = m.clone().unwrap_or_default();
            m.sort();
            m.join(" ")
        };
        let pairs = [
            ("lora_rank (r)", self.r.to_string(), run.r.to_string()),
            (
                "lora_alpha",
                self.lora_alpha.to_string(),
                run.lora_alpha.to_string(),
            ),
            (
                "lora_dropout",
                self.lora_dropout.to_string(),
                run.lora_dropout.to_string(),
            ),
            ("lora_bias", self.bias.clone(), run.bias.clone()),
            (
                "target_modules",
                targets(&self.target_modules),
                targets(&run.target_modules),
            ),
            (
                "modules_to_save",
                saves(&self.modules_to_save),
                saves(&run.modules_to_save),
            ),
            (
                "use_rslora",
                self.use_rslora.to_string(),
                run.use_rslora.to_string(),
            ),
            (
                "use_dora",
                self.use_dora.to_string(),
                run.use_dora.to_string(),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, saved, now)| saved != now)
            .map(|(name, saved, now)| format!("{name}: checkpoint '{saved}', this run '{now}'"))
            .collect()
    }

    /// Reads `adapter_config.json` and refuses what we cannot load faithfully.
    pub fn load(path: &Path) -> Result<Self, LoraConfigError> {
        let file_err = |message: String| LoraConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let cfg: PeftLoraConfig = serde_json::from_str(&text)
            .map_err(|e| file_err(format!("line {} column {}: {e}", e.line(), e.column())))?;
        cfg.check().map_err(file_err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!(
                "peft_type {} is not supported yet (LORA only)",
                self.peft_type
            ));
        }
        if self.fan_in_fan_out {
            return Err("fan_in_fan_out true is not supported yet".into());
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err("rank_pattern/alpha_pattern are not supported yet".into());
        }
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        Ok(())
    }

    /// The scale of the adapter, as PEFT computes it.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Writes the config as PEFT does (indent 2).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

/// PEFT's key for a LoRA weight: `base_model.model.<module>.lora_A.weight`.
pub fn peft_key(module_path: &str, which: &str) -> String {
    format!("base_model.model.{module_path}.{which}.weight")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeswift_args::cli::{Cli, parse};

    fn args(extra: &[&str]) -> Args {
        let argv = ["swift", "sft", "--model", "m"]
            .into_iter()
            .chain(extra.iter().copied());
        match parse(argv) {
            Ok(Cli::Run { resolved, .. }) => resolved.args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_seed_defaults() {
        let c = LoraConfig::from_args(&args(&[])).unwrap();
        assert_eq!((c.rank, c.alpha, c.dropout), (8, 32.0, 0.05));
        assert_eq!(c.targets, Targets::AllLinear);
        assert_eq!(c.scale(), 4.0);
        assert!(c.targets_module("model.layers.0.mlp.down_proj", false));
        assert!(!c.targets_module("lm_head", true));
        let rs =
            LoraConfig::from_args(&args(&["--use_rslora", "true", "--lora_rank", "16"])).unwrap();
        assert_eq!(rs.scale(), 8.0);
    }

    #[test]
    fn names_and_regexes_match_like_peft() {
        let c = LoraConfig::from_args(&args(&["--target_modules", "q_proj", "v_proj"])).unwrap();
        assert!(c.targets_module("model.layers.3.self_attn.q_proj", false));
        assert!(!c.targets_module("model.layers.3.self_attn.qq_proj", false));
        let r = LoraConfig::from_args(&args(&["--target_regex", r".*\.(q|v)_proj"])).unwrap();
        assert!(r.targets_module("model.layers.3.self_attn.v_proj", false));
        assert!(!r.targets_module("model.layers.3.self_attn.k_proj", false));
        let e = LoraConfig::from_args(&args(&["--target_modules", "all-embedding"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--target_modules all-embedding") && e.contains("not supported yet"),
            "{e}"
        );
        let bad = LoraConfig::from_args(&args(&["--target_regex", "(unclosed"])).unwrap_err();
        assert!(bad.to_string().contains("--target_regex"));
    }

    #[test]
    fn peft_config_round_trips_and_reads_peft_files() {
        let c = LoraConfig::from_args(&args(&["--lora_rank", "4", "--lora_alpha", "8"])).unwrap();
        let peft = c.to_peft("/models/tiny", vec!["q_proj".into(), "v_proj".into()]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter_config.json");
        peft.save(&path).unwrap();
        let back = PeftLoraConfig::load(&path).unwrap();
        assert_eq!(back, peft);
        assert_eq!(back.scale(), 2.0);
        // A file as PEFT 0.14 writes it, with fields we do not model.
        std::fs::write(
            &path,
            r#"{"alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "x",
                "bias": "none", "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
                "inference_mode": true, "init_lora_weights": true, "layer_replication": null,
                "layers_pattern": null, "layers_to_transform": null, "loftq_config": {},
                "lora_alpha": 16, "lora_bias": false, "lora_dropout": 0.0, "megatron_config": null,
                "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
                "r": 8, "rank_pattern": {}, "revision": null, "target_modules": ["q_proj", "v_proj"],
                "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": false}"#,
        )
        .unwrap();
        let peft = PeftLoraConfig::load(&path).unwrap();
        assert_eq!(peft.r, 8);
        assert_eq!(peft.scale(), 2.0);
        std::fs::write(
            &path,
            r#"{"peft_type": "IA3", "r": 8, "lora_alpha": 8, "target_modules": []}"#,
        )
        .unwrap();
        let err = PeftLoraConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains("IA3"),
            "{err}"
        );
    }

    #[test]
    fn reads_pissa_inits() {
        let c = LoraConfig::from_args(&args(&["--init_weights", "pissa"])).unwrap();
        assert_eq!(c.init, Init::Pissa);
        let c = LoraConfig::from_args(&args(&["--init_weights", "pissa_niter_4"])).unwrap();
        assert_eq!(c.init, Init::PissaNiter(4));
        assert_eq!(
            c.to_peft("m", vec![]).init_lora_weights,
            Value::from("pissa_niter_4")
        );
        assert!(Init::from_value(&Value::from("pissa_niter_x")).is_none());
        assert!(Init::from_value(&Value::from("olora")).is_none());
    }

    #[test]
    fn peft_keys() {
        assert_eq!(
            peft_key("model.layers.0.self_attn.q_proj", "lora_A"),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
    }

    #[test]
    fn differences_name_each_setting_and_ignore_order() {
        let base = LoraConfig::from_args(&args(&[]))
            .unwrap()
            .to_peft("m", vec!["q_proj".into(), "v_proj".into()]);
        let mut same = base.clone();
        same.target_modules = serde_json::json!(["v_proj", "q_proj"]);
        same.inference_mode = false;
        assert!(base.differences_from(&same).is_empty());
        let mut other = base.clone();
        other.lora_alpha *= 2.0;
        other.target_modules = serde_json::json!(["q_proj"]);
        other.use_dora = true;
        let d = base.differences_from(&other);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("lora_alpha: checkpoint '"), "{d:?}");
        assert_eq!(
            d[1],
            "target_modules: checkpoint 'q_proj v_proj', this run 'q_proj'"
        );
        assert_eq!(d[2], "use_dora: checkpoint 'false', this run 'true'");
    }
}
