//! What every handler shares: settings, the model's tokenizer and template, the server's
//! default generation settings, the scheduler handle and the metrics.

use std::sync::Arc;

use super::config::ServeConfig;
use super::error::ApiError;
use super::metrics::Metrics;
use super::scheduler::Scheduler;
use crate::infer::GenerationParams;
use crate::model::Pretrained;
use crate::template::Template;
use crate::tuner::multi_lora::AdapterId;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub config: ServeConfig,
    pub model: Arc<Pretrained>,
    pub template: Template,
    /// The command line over generation_config.json; requests override per field.
    pub defaults: GenerationParams,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// Unix time the server started (`created` in /v1/models).
    pub started: u64,
}

/// What a request's `model` selects: the base model or one of the served adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Base,
    Adapter(AdapterId),
}

impl Target {
    /// The adapter the engine runs the request's sequences with.
    pub fn adapter(self) -> Option<AdapterId> {
        match self {
            Target::Base => None,
            Target::Adapter(id) => Some(id),
        }
    }
}

impl AppState {
    /// The model names this server answers to: the served model, then every named adapter.
    pub fn model_names(&self) -> Vec<String> {
        std::iter::once(self.config.served_model_name.as_str())
            .chain(self.config.adapters.names())
            .map(String::from)
            .collect()
    }

    /// Resolves a request's `model`; unknown names are a 404 naming the known ones. The
    /// served model name gets the default adapter when there is one (a bare `--adapters`
    /// path), else the base model.
    pub fn resolve_model(&self, name: &str) -> Result<Target, ApiError> {
        let adapters = &self.config.adapters;
        if name == self.config.served_model_name {
            Ok(adapters.default_id().map_or(Target::Base, Target::Adapter))
        } else if let Some(id) = adapters.id_of(name) {
            Ok(Target::Adapter(id))
        } else {
            Err(ApiError::model_not_found(name, &self.model_names()))
        }
    }

    /// The served context length in tokens: the model's, or `--max_model_len` when smaller
    /// (the engine caps sequences at the same length).
    pub fn context(&self) -> usize {
        let model = self.model.model.config.max_position_embeddings;
        self.config.max_model_len.map_or(model, |m| m.min(model))
    }

    /// How the context limit is named in errors: OpenAI's words, plus the flag that set it.
    fn context_words(&self) -> String {
        let context = self.context();
        if context < self.model.model.config.max_position_embeddings {
            format!("This model's maximum context length is {context} tokens (--max_model_len)")
        } else {
            format!("This model's maximum context length is {context} tokens")
        }
    }

    /// Checks that a prompt and its `max_tokens` fit the context.
    pub fn check_length(
        &self,
        prompt_tokens: usize,
        prompt_param: &str,
        max_tokens: Option<usize>,
    ) -> Result<(), ApiError> {
        let context = self.context();
        if prompt_tokens == 0 {
            return Err(ApiError::invalid(prompt_param, "The prompt is empty"));
        }
        if prompt_tokens >= context {
            return Err(ApiError::context_length(
                prompt_param,
                format!(
                    "{}; the prompt has {prompt_tokens} tokens, leaving no room to generate",
                    self.context_words()
                ),
            ));
        }
        if let Some(m) = max_tokens
            && prompt_tokens + m > context
        {
            return Err(ApiError::context_length(
                "max_tokens",
                format!(
                    "{}; the prompt has {prompt_tokens} tokens and max_tokens asks for {m} more",
                    self.context_words()
                ),
            ));
        }
        Ok(())
    }
}
