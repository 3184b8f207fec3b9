//! A Hugging Face model folder, loaded: config, model_type, weights, tokenizer,
//! tokenizer_config.json and generation_config.json, checked against each other.

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::causal_lm::{CausalLm, LoadOptions};
use super::config::DecoderConfig;
use super::error::{ModelError, Result};
use super::generation_config::GenerationConfig;
use super::model_type::{Detection, ModelType};

/// Everything `swift infer` (and later the trainer and server) needs from a model folder.
pub struct Pretrained {
    pub folder: PathBuf,
    pub model_type: &'static ModelType,
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    /// tokenizer_config.json as JSON (`Value::Null` when the folder has none).
    pub tokenizer_config: Value,
    pub generation_config: GenerationConfig,
}

/// What to load and how (built from `--model`, `--model_type`, `--torch_dtype`).
#[derive(Debug, Clone, Default)]
pub struct PretrainedOptions {
    pub model_type: Option<String>,
    pub load: LoadOptions,
}

impl Pretrained {
    pub fn load(folder: &Path, opts: &PretrainedOptions) -> Result<Self> {
        if !folder.is_dir() {
            return Err(ModelError::MissingFile {
                path: folder.to_path_buf(),
                what: "model folder (--model must be a local folder with config.json)",
            });
        }
        let config_path = folder.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::MissingFile {
                path: config_path,
                what: "config.json",
            });
        }
        let config = DecoderConfig::from_file(&config_path)?;
        let (model_type, how) =
            ModelType::detect(opts.model_type.as_deref(), folder, config.architecture)?;
        if how != Detection::Given {
            tracing::info!(model_type = model_type.name, detected_from = ?how, "model_type");
        }
        let tokenizer = load_tokenizer(folder, &config, &config_path)?;
        let tokenizer_config = with_chat_template_file(
            read_optional_json(&folder.join("tokenizer_config.json"))?,
            folder,
        )?;
        let generation_config = GenerationConfig::from_folder(folder)?;
        let model = CausalLm::load(folder, config, &opts.load)?;
        tracing::info!(
            folder = %folder.display(),
            dtype = ?model.dtype(),
            layers = model.config.num_hidden_layers,
            hidden = model.config.hidden_size,
            "model loaded"
        );
        Ok(Pretrained {
            folder: folder.to_path_buf(),
            model_type,
            model,
            tokenizer,
            tokenizer_config,
            generation_config,
        })
    }

    /// Token ids that end generation: generation_config's `eos_token_id`, else config.json's,
    /// plus tokenizer_config's `eos_token`.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation_config.eos_token_ids();
        if ids.is_empty() {
            ids = self.model.config.eos_token_ids.clone();
        }
        if let Some(id) = self.special_token_id("eos_token") {
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The id of a special token named in tokenizer_config.json (`"eos_token": "<|im_end|>"`
    /// or the `{"content": ...}` form).
    pub fn special_token_id(&self, key: &str) -> Option<u32> {
        let v = self.tokenizer_config.get(key)?;
        let text = v
            .as_str()
            .or_else(|| v.get("content").and_then(Value::as_str))?;
        self.tokenizer.token_to_id(text)
    }
}

/// `torch_dtype` argument value (`float32`/`bfloat16`/`float16`) to a dtype; `None` = unset.
pub fn dtype_arg(value: Option<&str>) -> Result<Option<DType>> {
    match value {
        None => Ok(None),
        Some(s) => super::config::parse_dtype(s).map(Some).ok_or_else(|| {
            ModelError::Input(format!(
                "--torch_dtype {s}: expected float32, bfloat16 or float16"
            ))
        }),
    }
}

fn load_tokenizer(folder: &Path, config: &DecoderConfig, config_path: &Path) -> Result<Tokenizer> {
    let path = folder.join("tokenizer.json");
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path,
            what: "tokenizer.json",
        });
    }
    let tokenizer = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
        path: path.clone(),
        message: e.to_string(),
    })?;
    // Ids, not counts: added tokens may sit anywhere in the id space.
    let size = tokenizer
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&id| id as usize + 1);
    if size > config.vocab_size {
        return Err(ModelError::VocabMismatch {
            tokenizer_path: path,
            tokenizer_size: size,
            config_path: config_path.to_path_buf(),
            vocab_size: config.vocab_size,
        });
    }
    Ok(tokenizer)
}

/// transformers (since 4.47) saves a tokenizer's chat template as `chat_template.jinja`
/// beside tokenizer_config.json instead of inside it, and when that file is present it
/// wins over the config's entry (`PreTrainedTokenizerBase.from_pretrained`). Folded in
/// here so `--template_backend jinja` reads either layout.
fn with_chat_template_file(mut config: Value, folder: &Path) -> Result<Value> {
    let path = folder.join("chat_template.jinja");
    if !path.is_file() {
        return Ok(config);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    if !config.is_object() {
        config = Value::Object(Default::default());
    }
    config["chat_template"] = Value::String(text);
    Ok(config)
}

fn read_optional_json(path: &Path) -> Result<Value> {
    if !path.is_file() {
        return Ok(Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}
