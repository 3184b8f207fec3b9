//! Errors of loading and running a model. Each names the file, field or tensor at fault.

use std::path::PathBuf;

/// Anything that can go wrong between a model folder on disk and logits.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A JSON file that does not parse (serde_json's message carries line and column).
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A config field with a value this build cannot use.
    #[error("{}: field '{field}': {message}", path.display())]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error(
        "{}: unsupported architecture {found:?} in field 'architectures' (supported: {supported})",
        path.display()
    )]
    UnknownArchitecture {
        path: PathBuf,
        found: Vec<String>,
        supported: String,
    },

    #[error("--model_type '{model_type}' is not supported (supported: {supported})")]
    UnknownModelType {
        model_type: String,
        supported: String,
    },

    #[error(
        "cannot tell the model_type of {} from its folder name and architecture {architecture}; \
         pass --model_type (one of: {candidates})",
        path.display()
    )]
    AmbiguousModelType {
        path: PathBuf,
        architecture: String,
        candidates: String,
    },

    #[error(
        "--model_type '{model_type}' is a {expected} model but {} declares architecture {found}",
        path.display()
    )]
    ModelTypeMismatch {
        model_type: String,
        expected: String,
        found: String,
        path: PathBuf,
    },

    #[error("{}: missing {what}", path.display())]
    MissingFile { path: PathBuf, what: &'static str },

    /// A safetensors file that cannot be opened or parsed (truncated, bad header, ...).
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    #[error("tensor '{name}' not found in {files}")]
    MissingTensor { name: String, files: String },

    #[error("{}: tensor '{name}' has shape {found:?}, config.json implies {expected:?}", path.display())]
    TensorShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error(
        "{}: the tokenizer has {tokenizer_size} tokens but {}: 'vocab_size' is {vocab_size}; \
         token ids past the embedding would be out of range",
        tokenizer_path.display(),
        config_path.display()
    )]
    VocabMismatch {
        tokenizer_path: PathBuf,
        tokenizer_size: usize,
        config_path: PathBuf,
        vocab_size: usize,
    },

    /// An input the model cannot take (shapes, ids out of range, too long a sequence).
    #[error("{0}")]
    Input(String),

    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
}

/// Result of model code.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Adds a one-line context to candle errors (`.ctx("layer 3 attention")?`).
pub trait CandleContext<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| ModelError::Candle {
            context: context.into(),
            source,
        })
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(source: candle_core::Error) -> Self {
        ModelError::Candle {
            context: "tensor op".into(),
            source,
        }
    }
}
