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

/// What a request's `model` selects. Multi-LoRA adds `Adapter(name)` here; the engine
/// request will carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Base,
}

impl AppState {
    /// The model names this server answers to.
    pub fn model_names(&self) -> Vec<String> {
        vec![self.config.served_model_name.clone()]
    }

    /// Resolves a request's `model`; unknown names are a 404 naming the known ones.
    pub fn resolve_model(&self, name: &str) -> Result<Target, ApiError> {
        if name == self.config.served_model_name {
            Ok(Target::Base)
        } else {
            Err(ApiError::model_not_found(name, &self.model_names()))
        }
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        self.model.model.config.max_position_embeddings
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
                    "This model's maximum context length is {context} tokens; the prompt has \
                     {prompt_tokens} tokens, leaving no room to generate"
                ),
            ));
        }
        if let Some(m) = max_tokens
            && prompt_tokens + m > context
        {
            return Err(ApiError::context_length(
                "max_tokens",
                format!(
                    "This model's maximum context length is {context} tokens; the prompt has \
                     {prompt_tokens} tokens and max_tokens asks for {m} more"
                ),
            ));
        }
        Ok(())
    }
}
