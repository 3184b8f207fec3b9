//! `POST /v1/chat/completions`: messages through the model's chat template, then the
//! shared generation pipeline; JSON or SSE shaped as OpenAI's chat completion (chunks).

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body::{Body, json_kind};
use super::choices::{Generation, Usage, reason_str};
use super::error::ApiError;
use super::logprobs;
use super::sampling::{Limits, SamplingRequest, check_logprobs};
use super::sse::{self, ChunkFormat};
use super::state::AppState;
use super::{body_bytes, limits};
use crate::infer::{FinishReason, TokenLogprob};
use crate::template::{Message, Role};

pub const ROUTE: &str = "/v1/chat/completions";

/// Requests whose answer would silently not be what was asked: tool calling (our
/// templates render no tool schemas and nothing parses calls out of the text) and JSON
/// modes (nothing constrains decoding). `{"type": "text"}` and `tool_choice: "none"` ask
/// for plain text and are fine.
fn refuse_unserved_features(body: &Body) -> Result<(), ApiError> {
    let plain_text_only = matches!(body.raw("tool_choice"), Some(Value::String(s)) if s == "none");
    for name in ["tools", "functions"] {
        let asked = match body.raw(name) {
            None => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        if asked && !plain_text_only {
            return Err(ApiError::invalid(
                name,
                format!("'{name}' (tool calling) is not supported by this server"),
            ));
        }
    }
    match body.raw("response_format") {
        None => Ok(()),
        Some(v) if v.get("type").and_then(Value::as_str) == Some("text") => Ok(()),
        Some(v) => Err(ApiError::invalid(
            "response_format",
            format!(
                "'response_format' {} is not supported (only {{\"type\": \"text\"}})",
                v.get("type")
                    .map_or_else(|| v.to_string(), Value::to_string)
            ),
        )),
    }
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match run(state, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = Body::parse(&body_bytes(body, &state)?)?;
    let model: String = body.required("model")?;
    let target = state.resolve_model(&model)?;
    let messages = messages(&body)?;
    refuse_unserved_features(&body)?;
    let mut sampling = SamplingRequest::parse(&body, limits(&state))?;
    sampling.logprobs = chat_logprobs(&body, limits(&state))?;
    if sampling.logprobs.is_some() && state.defaults.num_beams > 1 {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs are not available with beam search (--num_beams > 1)",
        ));
    }
    let prompt = state.template.encode_prompt(&messages).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("The messages do not fit the chat template: {e}"),
        )
    })?;
    state.check_length(prompt.len(), "messages", sampling.max_tokens)?;
    let generation = Generation::start(
        &state,
        ROUTE,
        "chatcmpl",
        (model, target),
        prompt,
        &sampling,
    )?;
    if sampling.stream {
        let format = ChatChunks {
            state: state.clone(),
        };
        return Ok(sse::respond(state, generation, format, sampling.include_usage).into_response());
    }
    let (id, created, model) = (
        generation.id.clone(),
        generation.created,
        generation.model.clone(),
    );
    let (choices, usage) = generation.collect(&state).await?;
    let tokenizer = &state.model.tokenizer;
    let choices: Vec<Value> = choices
        .iter()
        .map(|c| {
            json!({
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": c.logprobs.as_deref().map(|l| logprobs::chat(tokenizer, l)),
                "finish_reason": reason_str(c.finish_reason),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage.json(),
    }))
    .into_response())
}

/// `messages`: a non-empty array of `{role, content}`; content is a string or an array of
/// text parts (`{"type": "text", "text": ...}`).
fn messages(body: &Body) -> Result<Vec<Message>, ApiError> {
    let items = match body.raw("messages") {
        None => {
            return Err(ApiError::invalid(
                "messages",
                "Missing required parameter: 'messages'",
            ));
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::invalid(
                "messages",
                format!("'messages' must be an array, not {}", json_kind(other)),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let param = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = m else {
        return Err(ApiError::invalid(
            format!("messages[{i}]"),
            format!("messages[{i}] must be an object, not {}", json_kind(m)),
        ));
    };
    let role = match m.get("role") {
        // OpenAI's newer name for the system role.
        Some(Value::String(r)) if r == "developer" => Role::System,
        Some(Value::String(r)) => Role::from_str(r)
            .map_err(|e| ApiError::invalid(param("role"), format!("messages[{i}]: {e}")))?,
        Some(other) => {
            return Err(ApiError::invalid(
                param("role"),
                format!(
                    "messages[{i}].role must be a string, not {}",
                    json_kind(other)
                ),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                param("role"),
                format!("messages[{i}] has no 'role'"),
            ));
        }
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        // An assistant turn may have no content (OpenAI allows null there).
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        Some(Value::Array(parts)) => text_parts(i, parts)?,
        Some(other) => {
            return Err(ApiError::invalid(
                param("content"),
                format!(
                    "messages[{i}].content must be a string or an array of text parts, not {}",
                    json_kind(other)
                ),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                param("content"),
                format!("messages[{i}] has no 'content'"),
            ));
        }
    };
    Ok(Message::new(role, content))
}

fn text_parts(i: usize, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => text.push_str(t),
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content[{j}]"),
                    "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                ));
            }
        }
    }
    Ok(text)
}

/// `logprobs` (bool) and `top_logprobs` (0..=max_logprobs, needs `logprobs`).
fn chat_logprobs(body: &Body, limits: Limits) -> Result<Option<usize>, ApiError> {
    let wanted = body.opt::<bool>("logprobs")?.unwrap_or(false);
    let top = body.opt::<i64>("top_logprobs")?;
    match (wanted, top) {
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "'top_logprobs' needs 'logprobs': true",
        )),
        (false, None) => Ok(None),
        (true, top) => Ok(Some(check_logprobs(
            "top_logprobs",
            top.unwrap_or(0),
            limits,
        )?)),
    }
}

/// Chat completion chunks.
struct ChatChunks {
    state: Arc<AppState>,
}

impl ChatChunks {
    fn chunk(&self, g: &Generation, choices: Value) -> Value {
        json!({
            "id": g.id,
            "object": "chat.completion.chunk",
            "created": g.created,
            "model": g.model,
            "choices": choices,
        })
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self, g: &Generation, index: usize) -> Option<Value> {
        Some(self.chunk(
            g,
            json!([{
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            }]),
        ))
    }

    fn text(&mut self, g: &Generation, index: usize, text: &str, lps: &[TokenLogprob]) -> Value {
        let logprobs = (!lps.is_empty()).then(|| logprobs::chat(&self.state.model.tokenizer, lps));
        self.chunk(
            g,
            json!([{
                "index": index,
                "delta": {"content": text},
                "logprobs": logprobs,
                "finish_reason": null,
            }]),
        )
    }

    fn finish(&mut self, g: &Generation, index: usize, reason: FinishReason) -> Value {
        self.chunk(
            g,
            json!([{
                "index": index,
                "delta": {},
                "logprobs": null,
                "finish_reason": reason_str(reason),
            }]),
        )
    }

    fn usage(&mut self, g: &Generation, usage: Usage) -> Value {
        let mut chunk = self.chunk(g, json!([]));
        chunk["usage"] = usage.json();
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> Option<String> {
        let body = Body::parse(json.as_bytes()).unwrap();
        refuse_unserved_features(&body).err().and_then(|e| e.param)
    }

    #[test]
    fn tool_calls_and_json_modes_are_refused_plain_text_is_not() {
        let tool = r#"[{"type": "function", "function": {"name": "f"}}]"#;
        assert_eq!(
            refused(&format!(r#"{{"tools": {tool}}}"#)).as_deref(),
            Some("tools")
        );
        assert_eq!(
            refused(r#"{"functions": [{"name": "f"}]}"#).as_deref(),
            Some("functions")
        );
        assert_eq!(
            refused(r#"{"response_format": {"type": "json_schema"}}"#).as_deref(),
            Some("response_format")
        );
        assert_eq!(
            refused(&format!(r#"{{"tools": {tool}, "tool_choice": "none"}}"#)),
            None
        );
        assert_eq!(
            refused(r#"{"tools": [], "response_format": {"type": "text"}}"#),
            None
        );
        assert_eq!(refused(r#"{"tools": null, "response_format": null}"#), None);
    }
}
