//! Token log-probabilities in the two shapes OpenAI uses: chat's
//! `{"content": [{token, logprob, bytes, top_logprobs}]}` and the legacy completions'
//! `{tokens, token_logprobs, top_logprobs, text_offset}`.

use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use crate::infer::TokenLogprob;

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

fn entry(tokenizer: &Tokenizer, id: u32, logprob: f32) -> Value {
    let token = token_text(tokenizer, id);
    json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
}

/// Chat's `logprobs` object.
pub fn chat(tokenizer: &Tokenizer, lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(tokenizer, lp.token, lp.logprob);
            e["top_logprobs"] = lp
                .top
                .iter()
                .map(|&(id, l)| entry(tokenizer, id, l))
                .collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// The completions route's `logprobs` object; `offset` is the text length before these
/// tokens (for `text_offset`).
pub fn completion(tokenizer: &Tokenizer, lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(lps.len());
    let mut token_logprobs = Vec::with_capacity(lps.len());
    let mut top = Vec::with_capacity(lps.len());
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        let text = token_text(tokenizer, lp.token);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(lp.logprob);
        let alternatives: Map<String, Value> = lp
            .top
            .iter()
            .map(|&(id, l)| (token_text(tokenizer, id), json!(l)))
            .collect();
        top.push(Value::Object(alternatives));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}
