//! Turning chat messages into prompt ids for `swift infer`.
//!
//! [`ChatTemplate`] is what the command needs from a template. The ms-swift templates
//! (runtime/src/template/, built on branch `data`) implement it once merged; until then
//! [`TokenizerChatTemplate`] renders the tokenizer's own `chat_template` (Hugging Face's
//! `apply_chat_template` with a generation prompt), which is what ms-swift's
//! `--template_backend jinja` does.

use minijinja::{Environment, context};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::dataset::ChatMessage;
use super::error::{InferError, Result};

/// A chat template as `swift infer` uses it.
pub trait ChatTemplate {
    /// Prompt ids for `messages`, ending with the assistant generation prompt.
    fn encode_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>>;
    /// Tokens that end an assistant turn.
    fn stop_token_ids(&self) -> Vec<u32>;
}

/// The tokenizer's Jinja `chat_template` from tokenizer_config.json.
pub struct TokenizerChatTemplate {
    source: String,
    tokenizer: Tokenizer,
    bos_token: String,
    eos_token: String,
}

impl TokenizerChatTemplate {
    /// Reads `chat_template`, `bos_token` and `eos_token` from tokenizer_config.json.
    pub fn new(tokenizer: Tokenizer, tokenizer_config: &Value) -> Result<Self> {
        let source = tokenizer_config
            .get("chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                InferError::Template("tokenizer_config.json has no 'chat_template'".into())
            })?
            .to_string();
        let token = |key: &str| -> String {
            let v = tokenizer_config.get(key);
            v.and_then(Value::as_str)
                .or_else(|| v.and_then(|v| v.get("content")).and_then(Value::as_str))
                .unwrap_or_default()
                .to_string()
        };
        Ok(TokenizerChatTemplate {
            source,
            tokenizer,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }

    /// The prompt text for `messages`.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| InferError::Template(format!("chat_template: {e}")))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| InferError::Template(format!("chat_template: {e}")))?;
        tmpl.render(context! {
            messages => messages_value(messages),
            add_generation_prompt => true,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| InferError::Template(format!("chat_template: {e}")))
    }
}

/// Messages as the list of `{role, content}` maps chat templates iterate over.
fn messages_value(messages: &[ChatMessage]) -> minijinja::Value {
    let items: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| {
            let map: std::collections::BTreeMap<String, minijinja::Value> = [
                ("role".to_string(), minijinja::Value::from(m.role.clone())),
                (
                    "content".to_string(),
                    minijinja::Value::from(m.content.clone()),
                ),
            ]
            .into_iter()
            .collect();
            minijinja::Value::from(map)
        })
        .collect();
    minijinja::Value::from(items)
}

impl ChatTemplate for TokenizerChatTemplate {
    fn encode_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.render(messages)?;
        // The template already wrote every special token: add none.
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| InferError::Template(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    fn stop_token_ids(&self) -> Vec<u32> {
        self.tokenizer
            .token_to_id(&self.eos_token)
            .into_iter()
            .collect()
    }
}
