//! What the shared decoder needs from a Hugging Face `config.json`, and the parts of that
//! file every architecture reads the same way: dtype, RoPE (transformers 4 and 5 forms),
//! sliding window, activation.
//!
//! Each architecture file (`qwen2.rs`, `qwen3.rs`, `llama.rs`) deserialises its own
//! `Config` (with [`BaseConfig`] flattened in) and turns it into a [`DecoderConfig`].

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Deserialize;
use serde_json::Value;

use super::error::{ModelError, Result};
use super::{llama, qwen2, qwen3};

/// The architectures this build implements, by their `architectures` name in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    Qwen2,
    Qwen3,
    Llama,
}

impl Architecture {
    /// All supported architectures, for error messages.
    pub const ALL: [Architecture; 3] = [
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Llama,
    ];

    /// The class name transformers writes into `architectures`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }

    /// Parses a transformers class name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.hf_name() == name)
    }

    fn supported_list() -> String {
        Self::ALL.map(Architecture::hf_name).join(", ")
    }
}

/// Rotary embedding frequencies: base and scaling rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The `rope_type`s this build implements.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Everything the shared module tree needs, resolved from any supported config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q_proj, k_proj, v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Biases on gate_proj, up_proj, down_proj.
    pub mlp_bias: bool,
    /// Qwen3's per-head RMSNorm on queries and keys before RoPE.
    pub qk_norm: bool,
    /// `torch_dtype` (transformers 4) or `dtype` (transformers 5), when the file says.
    pub torch_dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// Reads `config.json` and dispatches on its first `architectures` entry.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(path, value)
    }

    /// Parses an already-read config.json; `path` names the file in errors.
    pub fn from_value(path: &Path, value: Value) -> Result<Self> {
        let found: Vec<String> = match value.get("architectures") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let architecture = found
            .first()
            .and_then(|name| Architecture::from_hf_name(name))
            .ok_or_else(|| ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: found.clone(),
                supported: Architecture::supported_list(),
            })?;
        let parse = |v: Value| -> Result<_> {
            Ok(match architecture {
                Architecture::Qwen2 => typed::<qwen2::Config>(path, v)?.decoder_config(path)?,
                Architecture::Qwen3 => typed::<qwen3::Config>(path, v)?.decoder_config(path)?,
                Architecture::Llama => typed::<llama::Config>(path, v)?.decoder_config(path)?,
            })
        };
        let cfg = parse(value)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Queries per key/value head (grouped-query attention).
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let field_err = |field: &str, message: String| ModelError::ConfigField {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(field_err(field, "must be positive".into()));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(field_err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(field_err(
                "rms_norm_eps",
                format!("{} must be a positive number", self.rms_norm_eps),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(field_err(
                "head_dim",
                format!("{} is odd; RoPE needs an even head_dim", self.head_dim),
            ));
        }
        Ok(())
    }
}

/// config.json's value as an architecture's config. A wrong type names its field
/// (`field 'hidden_size': invalid type: string "big", expected usize`): the file was parsed
/// to a `Value` first, so serde's own message has no line to point at. The shared fields
/// sit in a flattened [`BaseConfig`], which hides their names from the path tracker, so a
/// failure is located by reading that part alone.
fn typed<T: serde::de::DeserializeOwned>(path: &Path, v: Value) -> Result<T> {
    // The field's error if the tracker knows where it failed, else serde's own error.
    let located = |e: serde_path_to_error::Error<serde_json::Error>| {
        let field = e.path().to_string();
        let source = e.into_inner();
        if field == "." {
            Err(source)
        } else {
            Ok(ModelError::ConfigField {
                path: path.to_path_buf(),
                field,
                message: source.to_string(),
            })
        }
    };
    let unlocated = match serde_path_to_error::deserialize::<_, T>(v.clone()).map_err(located) {
        Ok(config) => return Ok(config),
        Err(Ok(field_error)) => return Err(field_error),
        Err(Err(source)) => source,
    };
    match serde_path_to_error::deserialize::<_, BaseConfig>(v).map_err(located) {
        Err(Ok(field_error)) => Err(field_error),
        // Not in the shared part, or still unlocated (a missing field names itself).
        _ => Err(json_err(path, unlocated)),
    }
}

fn json_err(path: &Path, source: serde_json::Error) -> ModelError {
    ModelError::Json {
        path: path.to_path_buf(),
        source,
    }
}

/// The fields every supported architecture shares, in both transformers 4 and 5 spellings.
#[derive(Debug, Clone, Deserialize)]
pub struct BaseConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in old configs: then every head has its own key/value (MHA).
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub tie_word_embeddings: Option<bool>,
    /// transformers 4: top-level `rope_theta` and `rope_scaling`.
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    /// transformers 5: `rope_parameters` holds `rope_theta`, `rope_type` and the scaling keys.
    pub rope_parameters: Option<Value>,
    /// transformers 4 writes `torch_dtype`, transformers 5 `dtype`.
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
}

fn default_act() -> String {
    "silu".into()
}

impl BaseConfig {
    /// The shared part of a [`DecoderConfig`]; the architecture file fills in the rest.
    pub fn decoder_config(
        &self,
        path: &Path,
        architecture: Architecture,
        head_dim: Option<usize>,
        default_rope_theta: f64,
        default_tie: bool,
    ) -> Result<DecoderConfig> {
        if self.hidden_act != "silu" {
            return Err(ModelError::ConfigField {
                path: path.to_path_buf(),
                field: "hidden_act".into(),
                message: format!("'{}' is not supported (supported: silu)", self.hidden_act),
            });
        }
        if self.num_attention_heads == 0 {
            return Err(ModelError::ConfigField {
                path: path.to_path_buf(),
                field: "num_attention_heads".into(),
                message: "must be positive".into(),
            });
        }
        Ok(DecoderConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            rms_norm_eps: self.rms_norm_eps,
            rope: self.rope(path, default_rope_theta)?,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(default_tie),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            torch_dtype: self.torch_dtype(path)?,
            bos_token_id: token_id(self.bos_token_id.as_ref()).into_iter().next(),
            eos_token_ids: token_id(self.eos_token_id.as_ref()),
        })
    }

    /// `dtype` (transformers 5) wins over `torch_dtype` (transformers 4) when both appear.
    fn torch_dtype(&self, path: &Path) -> Result<Option<DType>> {
        let (field, value) = match (&self.dtype, &self.torch_dtype) {
            (Some(v), _) => ("dtype", v),
            (None, Some(v)) => ("torch_dtype", v),
            (None, None) => return Ok(None),
        };
        parse_dtype(value)
            .map(Some)
            .ok_or_else(|| ModelError::ConfigField {
                path: path.to_path_buf(),
                field: field.into(),
                message: format!(
                    "'{value}' is not supported (supported: float32, bfloat16, float16)"
                ),
            })
    }

    /// RoPE base and scaling from either form: transformers 5's `rope_parameters` or
    /// transformers 4's top-level `rope_theta` + `rope_scaling`.
    fn rope(&self, path: &Path, default_theta: f64) -> Result<RopeConfig> {
        let (field, params) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", Some(p)),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        let nested_theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64);
        let theta = nested_theta.or(self.rope_theta).unwrap_or(default_theta);
        let scaling = match params {
            None => RopeScaling::Default,
            Some(p) => rope_scaling(path, field, p)?,
        };
        Ok(RopeConfig { theta, scaling })
    }
}

fn rope_scaling(path: &Path, field: &str, p: &Value) -> Result<RopeScaling> {
    let err = |message: String| ModelError::ConfigField {
        path: path.to_path_buf(),
        field: field.into(),
        message,
    };
    // Old configs spell the key `type`.
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        p.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| err(format!("rope_type '{kind}' needs a number '{key}'")))
    };
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(err(format!(
            "rope_type '{other}' is not supported (supported: default, linear, llama3)"
        ))),
    }
}

/// A token id field that may be a number, a list of numbers or null.
fn token_id(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// `float32` / `bfloat16` / `float16` (and torch's aliases) to a candle dtype.
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s.trim_start_matches("torch.") {
        "float32" | "float" | "fp32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "half" | "fp16" => Some(DType::F16),
        _ => None,
    }
}

/// Refuses `use_sliding_window: true`: no Qwen2/Qwen3 release enables it and this build's
/// attention is full-context.
pub fn check_sliding_window(path: &Path, use_sliding_window: Option<bool>) -> Result<()> {
    if use_sliding_window == Some(true) {
        return Err(ModelError::ConfigField {
            path: PathBuf::from(path),
            field: "use_sliding_window".into(),
            message: "sliding-window attention is not supported yet".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen25_v4() -> Value {
        // Qwen2.5-0.5B-Instruct's config.json as transformers 4 writes it.
        json!({
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "hidden_act": "silu",
            "hidden_size": 896,
            "initializer_range": 0.02,
            "intermediate_size": 4864,
            "max_position_embeddings": 32768,
            "max_window_layers": 21,
            "model_type": "qwen2",
            "num_attention_heads": 14,
            "num_hidden_layers": 24,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": true,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.43.1",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": 151936
        })
    }

    #[test]
    fn reads_transformers4_qwen2() {
        let c = DecoderConfig::from_value(Path::new("config.json"), qwen25_v4()).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.num_key_value_groups(), 7);
        assert_eq!(c.rope.theta, 1e6);
        assert_eq!(c.rope.scaling, RopeScaling::Default);
        assert_eq!(c.torch_dtype, Some(DType::BF16));
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![151645]);
    }

    #[test]
    fn reads_transformers5_rope_parameters_and_dtype() {
        let mut v = qwen25_v4();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_theta": 5e5, "rope_type": "default"}),
        );
        o.insert("dtype".into(), json!("float16"));
        o.insert("sliding_window".into(), Value::Null);
        let c = DecoderConfig::from_value(Path::new("config.json"), v).unwrap();
        assert_eq!(c.rope.theta, 5e5);
        assert_eq!(c.torch_dtype, Some(DType::F16));
    }

    #[test]
    fn reads_llama3_rope_scaling_in_both_forms() {
        let scaling = json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"});
        let base = json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
            "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "vocab_size": 128256,
            "tie_word_embeddings": true
        });
        let mut v4 = base.clone();
        v4["rope_theta"] = json!(500000.0);
        v4["rope_scaling"] = scaling.clone();
        let mut v5 = base;
        let mut params = scaling;
        params["rope_theta"] = json!(500000.0);
        v5["rope_parameters"] = params;
        let a = DecoderConfig::from_value(Path::new("a"), v4).unwrap();
        let b = DecoderConfig::from_value(Path::new("b"), v5).unwrap();
        assert_eq!(a.rope, b.rope);
        assert!(matches!(a.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert_eq!(a.head_dim, 64);
    }

    #[test]
    fn unknown_architecture_names_the_field() {
        let mut v = qwen25_v4();
        v["architectures"] = json!(["MambaForCausalLM"]);
        let e = DecoderConfig::from_value(Path::new("m/config.json"), v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json")
                && e.contains("MambaForCausalLM")
                && e.contains("architectures"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_values_name_their_field() {
        for (field, value, needle) in [
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("torch_dtype", json!("int8"), "torch_dtype"),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
                "rope_scaling",
            ),
            ("use_sliding_window", json!(true), "use_sliding_window"),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
            // Wrong types name the field too (the file is parsed to a Value first, so
            // serde's own message had no line and no name).
            ("hidden_size", json!("big"), "field 'hidden_size'"),
            ("rms_norm_eps", json!(-1.0), "field 'rms_norm_eps'"),
            ("rms_norm_eps", json!(0.0), "field 'rms_norm_eps'"),
        ] {
            let mut v = qwen25_v4();
            v[field] = value;
            let e = DecoderConfig::from_value(Path::new("config.json"), v)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{field}: {e}");
        }
    }

    #[test]
    fn missing_required_field_is_a_json_error_with_the_path() {
        let mut v = qwen25_v4();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = DecoderConfig::from_value(Path::new("x/config.json"), v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("hidden_size"),
            "{e}"
        );
    }
}
