//! Errors of generation and of `swift infer`.

use std::path::PathBuf;

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Model(#[from] ModelError),

    #[error("the prompt is empty")]
    EmptyPrompt,

    #[error("the prompt has {prompt_tokens} tokens, more than fits {what}: {limit}")]
    PromptTooLong {
        prompt_tokens: usize,
        limit: usize,
        what: String,
    },

    #[error("{}:{line}: {message}", path.display())]
    Dataset {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Template(String),

    #[error("--{arg}: {message}")]
    Argument { arg: &'static str, message: String },

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, InferError>;
