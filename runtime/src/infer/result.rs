//! ms-swift's inference result jsonl: one object per row with `response`, `labels`,
//! `logprobs` and the `messages` (the generated answer appended as the last turn).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use super::engine::Output;
use super::error::{InferError, Result};
use crate::template::{Message, Role};

/// `--result_path`, else `result/<model folder name>/<YYYYmmdd-HHMMSS>.jsonl` (ms-swift's
/// layout for a model without a checkpoint folder).
pub fn default_path(given: Option<&str>, model: &Path) -> PathBuf {
    if let Some(p) = given {
        return PathBuf::from(p);
    }
    let name = model
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model");
    let time = chrono::Local::now().format("%Y%m%d-%H%M%S");
    PathBuf::from("result")
        .join(name)
        .join(format!("{time}.jsonl"))
}

/// The record of one dataset row.
pub fn dataset_record(
    prompt: &[Message],
    out: &Output,
    labels: Option<&str>,
    tokenizer: &Tokenizer,
) -> Value {
    let mut messages = messages_json(prompt);
    messages.push(json!({"role": Role::Assistant.as_str(), "content": out.text}));
    let mut m = Map::new();
    m.insert("response".into(), json!(out.text));
    m.insert("labels".into(), json!(labels));
    m.insert(
        "logprobs".into(),
        out.logprobs
            .as_ref()
            .map_or(Value::Null, |lps| logprobs_json(lps, tokenizer)),
    );
    m.insert("messages".into(), Value::Array(messages));
    Value::Object(m)
}

/// Messages in ms-swift's `{"role", "content"}` form.
pub fn messages_json(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect()
}

/// The record of one interactive turn (ms-swift writes the messages and the response).
pub fn chat_record(messages: &[Message], response: &str) -> Value {
    json!({ "messages": messages_json(messages), "response": response })
}

/// OpenAI's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn logprobs_json(lps: &[super::engine::TokenLogprob], tokenizer: &Tokenizer) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = tokenizer.decode(&[id], false).unwrap_or_default();
        json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(lp.token, lp.logprob);
            e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
            e
        })
        .collect();
    json!({ "content": content })
}

/// Appends records to a jsonl file, creating its folder.
pub fn append(path: &Path, records: &[Value]) -> Result<()> {
    let io = |source| InferError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    // One write for the whole batch: formatting a record straight into the file made a
    // system call per JSON token (2.4 million for one answer with 512 top logprobs a
    // token), and a run killed between them left half a line.
    let mut lines = String::new();
    for r in records {
        lines.push_str(&r.to_string());
        lines.push('\n');
    }
    f.write_all(lines.as_bytes()).map_err(io)?;
    Ok(())
}
