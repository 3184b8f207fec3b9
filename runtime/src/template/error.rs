//! Everything that can go wrong building or applying a chat template.

use std::path::PathBuf;

/// A template error; each names the template, argument, message or token involved.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("--template '{name}': unknown template (this build has: {known})")]
    UnknownTemplate { name: String, known: String },

    #[error(
        "model_type '{model_type}' has no default chat template in this build; \
         pass --template (one of: {known})"
    )]
    NoDefaultTemplate { model_type: String, known: String },

    #[error(
        "template '{template}' needs the token '{token}' ({why}), but the tokenizer has no such token"
    )]
    MissingToken {
        template: String,
        token: String,
        why: &'static str,
    },

    #[error(
        "tokenizer_config.json: '{field}' is missing or not a token (the model folder needs \
         tokenizer_config.json with it; is the file there?)"
    )]
    MissingConfigField { field: &'static str },

    #[error("template '{template}' does not support a system prompt{hint}")]
    SystemUnsupported {
        template: String,
        hint: &'static str,
    },

    #[error("--system {}: cannot read the file: {source}", path.display())]
    SystemFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("message {index}: {reason}")]
    BadMessage { index: usize, reason: String },

    #[error("the conversation has no messages besides the system prompt")]
    EmptyConversation,

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(
        "--template_backend jinja renders the tokenizer's chat_template for inference only \
         (as in ms-swift); training uses --template_backend swift"
    )]
    JinjaTraining,

    #[error("--template_backend jinja: {0}")]
    Jinja(String),
}

impl TemplateError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        TemplateError::Tokenizer(e.to_string())
    }
}
