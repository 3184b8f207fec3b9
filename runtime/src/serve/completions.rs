//! `POST /v1/completions`: a raw text prompt (or token ids) continued without a chat
//! template; JSON or SSE shaped as OpenAI's legacy text completion.

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
use super::sampling::{SamplingRequest, check_logprobs};
use super::sse::{self, ChunkFormat};
use super::state::AppState;
use super::{body_bytes, limits};
use crate::infer::{FinishReason, TokenLogprob};

pub const ROUTE: &str = "/v1/completions";

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
    refuse_unsupported(&body)?;
    let prompt = prompt_tokens(&body, &state)?;
    let mut sampling = SamplingRequest::parse(&body, limits(&state))?;
    if let Some(n) = body.opt::<i64>("best_of")?
        && n != sampling.n as i64
    {
        return Err(ApiError::invalid(
            "best_of",
            "'best_of' other than 'n' is not supported",
        ));
    }
    sampling.logprobs = body
        .opt::<i64>("logprobs")?
        .map(|n| check_logprobs("logprobs", n, limits(&state)))
        .transpose()?;
    if sampling.logprobs.is_some() && state.defaults.num_beams > 1 {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs are not available with beam search (--num_beams > 1)",
        ));
    }
    state.check_length(prompt.len(), "prompt", sampling.max_tokens)?;
    let generation = Generation::start(&state, ROUTE, "cmpl", (model, target), prompt, &sampling)?;
    if sampling.stream {
        let format = TextChunks {
            state: state.clone(),
            offsets: vec![0; sampling.n],
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
                "text": c.text,
                "logprobs": c.logprobs.as_deref().map(|l| logprobs::completion(tokenizer, l, 0)),
                "finish_reason": reason_str(c.finish_reason),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage.json(),
    }))
    .into_response())
}

/// Fields of the completions API this server does not implement: refused, not ignored.
fn refuse_unsupported(body: &Body) -> Result<(), ApiError> {
    if body.opt::<bool>("echo")?.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "'echo' is not supported"));
    }
    if body.opt::<String>("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "'suffix' is not supported"));
    }
    Ok(())
}

/// `prompt`: a string, token ids, or an array holding one of those (one prompt per
/// request; batch several prompts as several requests).
fn prompt_tokens(body: &Body, state: &AppState) -> Result<Vec<u32>, ApiError> {
    let value = body
        .raw("prompt")
        .ok_or_else(|| ApiError::invalid("prompt", "Missing required parameter: 'prompt'"))?;
    let value = match value {
        Value::Array(items) if items.len() == 1 && !items[0].is_number() => &items[0],
        Value::Array(items) if items.len() > 1 && items.iter().all(|v| !v.is_number()) => {
            return Err(ApiError::invalid(
                "prompt",
                "send one prompt per request (batched prompts are not supported)",
            ));
        }
        v => v,
    };
    match value {
        Value::String(text) => state
            .model
            .tokenizer
            .encode(text.as_str(), true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}"))),
        Value::Array(ids) => {
            let vocab = state.model.model.config.vocab_size;
            ids.iter()
                .map(|v| match v.as_u64() {
                    Some(id) if (id as usize) < vocab => Ok(id as u32),
                    _ => Err(ApiError::invalid(
                        "prompt",
                        format!("token ids must be integers in [0, {vocab}), got {v}"),
                    )),
                })
                .collect()
        }
        other => Err(ApiError::invalid(
            "prompt",
            format!(
                "'prompt' must be a string or an array of token ids, not {}",
                json_kind(other)
            ),
        )),
    }
}

/// Text completion chunks; `offsets` tracks each choice's text length for `text_offset`.
struct TextChunks {
    state: Arc<AppState>,
    offsets: Vec<usize>,
}

impl TextChunks {
    fn chunk(&self, g: &Generation, choices: Value) -> Value {
        json!({
            "id": g.id,
            "object": "text_completion",
            "created": g.created,
            "model": g.model,
            "choices": choices,
        })
    }
}

impl ChunkFormat for TextChunks {
    fn opening(&self, _: &Generation, _: usize) -> Option<Value> {
        None
    }

    fn text(&mut self, g: &Generation, index: usize, text: &str, lps: &[TokenLogprob]) -> Value {
        let logprobs = (!lps.is_empty())
            .then(|| logprobs::completion(&self.state.model.tokenizer, lps, self.offsets[index]));
        self.offsets[index] += text.len();
        self.chunk(
            g,
            json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}]),
        )
    }

    fn finish(&mut self, g: &Generation, index: usize, reason: FinishReason) -> Value {
        self.chunk(
            g,
            json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason_str(reason)}]),
        )
    }

    fn usage(&mut self, g: &Generation, usage: Usage) -> Value {
        let mut chunk = self.chunk(g, json!([]));
        chunk["usage"] = usage.json();
        chunk
    }
}
