//! Reading the rows `swift infer` runs over (`--val_dataset`, or the split of `--dataset`).
//!
//! Interim loader: local `.jsonl`/`.json` files in ms-swift's `messages` format or its
//! `query`/`response` (+`system`, `history`) format, with the `path#N` row limit. The data
//! module (runtime/src/data/, issue 3 item 3 and the data issue) brings the full dataset
//! syntax and every format; `swift infer` switches to it when it lands.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{InferError, Result};

/// One chat message as ms-swift's datasets and result files spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A dataset row in ms-swift's standard form.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub messages: Vec<ChatMessage>,
}

impl Row {
    /// Splits off the final assistant turn (ms-swift's `InferRequest.remove_response`):
    /// returns it as the labels, leaving the prompt messages.
    pub fn take_labels(&mut self) -> Option<String> {
        match self.messages.last() {
            Some(m) if m.role == "assistant" => self.messages.pop().map(|m| m.content),
            _ => None,
        }
    }
}

/// Loads every `path[#N]` of a dataset list.
pub fn load(specs: &[String]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for spec in specs {
        let (path, limit) = parse_spec(spec)?;
        let mut file_rows = load_file(&path)?;
        if let Some(n) = limit {
            file_rows.truncate(n);
        }
        rows.extend(file_rows);
    }
    Ok(rows)
}

/// `N` random rows (seeded), or all of them when `n` is `None` or larger.
pub fn sample(mut rows: Vec<Row>, n: Option<usize>, seed: u64) -> Vec<Row> {
    match n {
        Some(n) if n < rows.len() => {
            let mut rng = StdRng::seed_from_u64(seed);
            rows.shuffle(&mut rng);
            rows.truncate(n);
            rows
        }
        _ => rows,
    }
}

/// The validation part of a training dataset: a seeded `ratio` share of the rows (at least
/// one), as `--split_dataset_ratio` asks.
pub fn split_validation(mut rows: Vec<Row>, ratio: f64, seed: u64) -> Vec<Row> {
    let n = ((rows.len() as f64 * ratio).ceil() as usize).clamp(1.min(rows.len()), rows.len());
    let mut rng = StdRng::seed_from_u64(seed);
    rows.shuffle(&mut rng);
    rows.truncate(n);
    rows
}

fn parse_spec(spec: &str) -> Result<(PathBuf, Option<usize>)> {
    match spec.rsplit_once('#') {
        Some((path, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
            let n = n.parse().map_err(|_| InferError::Argument {
                arg: "val_dataset",
                message: format!("'{spec}': bad row count"),
            })?;
            Ok((PathBuf::from(path), Some(n)))
        }
        _ => Ok((PathBuf::from(spec), None)),
    }
}

fn load_file(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|source| InferError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, message: String| InferError::Dataset {
        path: path.to_path_buf(),
        line,
        message,
    };
    let values: Vec<(usize, Value)> = if path.extension().is_some_and(|e| e == "json") {
        match serde_json::from_str(&text).map_err(|e| bad(e.line(), e.to_string()))? {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i + 1, v))
                .collect(),
            _ => return Err(bad(1, "expected a JSON array of rows".into())),
        }
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                Ok((
                    i + 1,
                    serde_json::from_str(l).map_err(|e| bad(i + 1, e.to_string()))?,
                ))
            })
            .collect::<Result<_>>()?
    };
    values
        .into_iter()
        .map(|(line, v)| row_from_value(&v).map_err(|m| bad(line, m)))
        .collect()
}

/// One row in either supported format.
fn row_from_value(v: &Value) -> std::result::Result<Row, String> {
    if let Some(messages) = v.get("messages") {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(messages.clone()).map_err(|e| format!("'messages': {e}"))?;
        return Ok(Row { messages });
    }
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(String::from);
    let Some(query) = text("query") else {
        return Err("a row needs 'messages' or 'query' (interim loader: messages and query/response formats)".into());
    };
    let mut messages = Vec::new();
    if let Some(system) = text("system") {
        messages.push(ChatMessage::new("system", system));
    }
    if let Some(Value::Array(turns)) = v.get("history") {
        for turn in turns {
            match turn.as_array().map(|t| t.as_slice()) {
                Some([Value::String(q), Value::String(r)]) => {
                    messages.push(ChatMessage::new("user", q.clone()));
                    messages.push(ChatMessage::new("assistant", r.clone()));
                }
                _ => return Err("'history' must be a list of [query, response] pairs".into()),
            }
        }
    }
    messages.push(ChatMessage::new("user", query));
    if let Some(response) = text("response") {
        messages.push(ChatMessage::new("assistant", response));
    }
    Ok(Row { messages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats_and_the_row_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
                "\n\n",
                r#"{"system": "be brief", "query": "2+2?", "response": "4", "history": [["a", "b"]]}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = load(&[path.display().to_string()]).unwrap();
        assert_eq!(rows.len(), 2);
        let roles: Vec<&str> = rows[1].messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
        let mut r = rows[1].clone();
        assert_eq!(r.take_labels().as_deref(), Some("4"));
        assert_eq!(r.messages.last().unwrap().content, "2+2?");
        assert_eq!(load(&[format!("{}#1", path.display())]).unwrap().len(), 1);
    }

    #[test]
    fn a_bad_row_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"query\": \"ok\"}\n{\"text\": 1}\n").unwrap();
        let e = load(&[path.display().to_string()]).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("'query'"), "{e}");
    }

    #[test]
    fn sampling_is_seeded() {
        let rows: Vec<Row> = (0..10)
            .map(|i| Row {
                messages: vec![ChatMessage::new("user", i.to_string())],
            })
            .collect();
        let a = sample(rows.clone(), Some(3), 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a, sample(rows.clone(), Some(3), 1));
        assert_eq!(split_validation(rows, 0.01, 42).len(), 1);
    }
}
