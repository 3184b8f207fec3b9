//! Rows to conversations: ms-swift's `AutoPreprocessor` and the row preprocessors it picks
//! (`MessagesPreprocessor` for `messages`/`conversation(s)`, sharegpt included;
//! `AlpacaPreprocessor` for instruction/input/output; `ResponsePreprocessor` for
//! query/response/history/system and their aliases), plus `rejected_response` and the
//! self-cognition `{{NAME}}`/`{{AUTHOR}}` placeholders.
//!
//! ms-swift chooses the preprocessor from the columns of the whole dataset; we choose it per
//! row (the same choice for the uniform files datasets are), so rows can stream.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

use super::columns::{ColumnMap, aliases, safe_rename};
use super::error::RowError;
use crate::template::{Message, Role};

/// One conversation ready for a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub messages: Vec<Message>,
    /// Preference data: the rejected final answer.
    pub rejected_response: Option<String>,
}

impl Sample {
    /// The row as ms-swift writes it to `val_dataset.jsonl` (its standard `messages` form).
    pub fn to_json(&self) -> Value {
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                let mut v = json!({"role": m.role.as_str(), "content": m.content});
                if let Some(loss) = m.loss {
                    v["loss"] = json!(loss);
                }
                v
            })
            .collect();
        let mut row = json!({ "messages": messages });
        if let Some(r) = &self.rejected_response {
            row["rejected_response"] = json!(r);
        }
        row
    }
}

/// Names for the self-cognition placeholders: (Chinese, English).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfCognition {
    pub name: Option<(String, String)>,
    pub author: Option<(String, String)>,
}

impl SelfCognition {
    /// `--model_name`/`--model_author` values: one name serves both languages.
    pub fn from_lists(name: &[String], author: &[String]) -> Self {
        let pair = |v: &[String]| match v {
            [] => None,
            [one] => Some((one.clone(), one.clone())),
            [zh, en, ..] => Some((zh.clone(), en.clone())),
        };
        SelfCognition {
            name: pair(name),
            author: pair(author),
        }
    }

    fn is_set(&self) -> bool {
        self.name.is_some() || self.author.is_some()
    }
}

/// How rows become samples.
#[derive(Debug, Clone, Default)]
pub struct Preprocess {
    /// `--columns`, applied before anything else.
    pub columns: ColumnMap,
    pub self_cognition: SelfCognition,
    /// Appended to the user turn / prepended to the answer (ms-swift's self-cognition
    /// subsets `qwen3` and `empty_think`).
    pub query_suffix: String,
    pub response_prefix: String,
}

const MESSAGE_KEYS: [&str; 3] = ["messages", "conversation", "conversations"];
const SYSTEM_KEYS: [&str; 2] = ["system", "system_prompt"];
const QUERY_KEYS: [&str; 6] = [
    "query",
    "prompt",
    "input",
    "instruction",
    "question",
    "problem",
];
const RESPONSE_KEYS: [&str; 11] = [
    "response",
    "answer",
    "output",
    "targets",
    "target",
    "answer_key",
    "answers",
    "solution",
    "text",
    "completion",
    "content",
];

fn fail(msg: impl Into<String>) -> RowError {
    RowError::Format(msg.into())
}

/// Row fields of ms-swift's formats that change what a model is trained on and that this
/// build does not implement, with what they are for. Refused rather than dropped: a row
/// trained without its `tools` (which ms-swift renders into the system prompt) or its
/// images would silently train on a different prompt.
const UNBUILT_ROW_FIELDS: [(&str, &str); 6] = [
    (
        "tools",
        "agent tool definitions, rendered into the system prompt by ms-swift",
    ),
    ("images", "multimodal input"),
    ("videos", "multimodal input"),
    ("audios", "multimodal input"),
    ("objects", "grounding boxes for multimodal input"),
    ("tool_calls", "agent tool calls"),
];

/// Whether a field is there with a value (ms-swift's text datasets often carry
/// `"images": []` or `"tools": null`, which mean nothing).
fn has_value(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.trim().is_empty() && s.trim() != "[]",
        _ => true,
    }
}

fn refuse_unbuilt_fields(row: &Map<String, Value>) -> Result<(), RowError> {
    for (field, what) in UNBUILT_ROW_FIELDS {
        if row.get(field).is_some_and(has_value) {
            return Err(fail(format!("'{field}' ({what}) is not supported yet")));
        }
    }
    Ok(())
}

impl Preprocess {
    /// One row to a sample; `rng` picks among several responses (ms-swift picks randomly).
    pub fn sample(
        &self,
        mut row: Map<String, Value>,
        rng: &mut impl Rng,
    ) -> Result<Sample, RowError> {
        safe_rename(&mut row, &self.columns).map_err(RowError::Format)?;
        refuse_unbuilt_fields(&row)?;
        let tag_zh = row.get("tag").and_then(Value::as_str).map(|t| t == "zh");
        let mut sample = if MESSAGE_KEYS.iter().any(|k| row.contains_key(*k)) {
            messages_row(row)?
        } else {
            if row.contains_key("instruction") && row.contains_key("input") {
                alpaca_to_response(&mut row)?;
            }
            self.response_row(row, rng)?
        };
        if self.self_cognition.is_set() {
            let zh = tag_zh.unwrap_or_else(|| sample.messages.iter().any(|m| has_cjk(&m.content)));
            self.fill_placeholders(&mut sample, zh);
        }
        Ok(sample)
    }

    fn fill_placeholders(&self, sample: &mut Sample, zh: bool) {
        let pick = |p: &Option<(String, String)>| {
            p.as_ref()
                .map(|(z, e)| if zh { z.clone() } else { e.clone() })
        };
        let name = pick(&self.self_cognition.name);
        let author = pick(&self.self_cognition.author);
        for m in &mut sample.messages {
            if let Some(n) = &name {
                m.content = m.content.replace("{{NAME}}", n);
            }
            if let Some(a) = &author {
                m.content = m.content.replace("{{AUTHOR}}", a);
            }
        }
    }

    /// query/response/history/system rows (ms-swift's `ResponsePreprocessor`).
    fn response_row(
        &self,
        mut row: Map<String, Value>,
        rng: &mut impl Rng,
    ) -> Result<Sample, RowError> {
        let mut mapping: ColumnMap = aliases(&SYSTEM_KEYS, "system").collect();
        mapping.extend(aliases(&QUERY_KEYS, "query"));
        mapping.extend(aliases(&RESPONSE_KEYS, "response"));
        safe_rename(&mut row, &mapping).map_err(RowError::Format)?;
        let response = match row.remove("response") {
            Some(Value::Array(choices)) => choices.choose(rng).cloned(),
            other => other,
        };
        let mut response = opt_string(response, "response")?;
        let mut query = opt_string(row.remove("query"), "query")?;
        let system = opt_string(row.remove("system"), "system")?;
        let mut history = history(row.remove("history"))?;
        if let Some(q) = &mut query {
            q.push_str(&self.query_suffix);
        }
        if let Some(r) = &mut response {
            r.insert_str(0, &self.response_prefix);
        }
        history.push((query, response));
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::system(s));
        }
        for (q, r) in history {
            messages.extend(q.map(Message::user));
            messages.extend(r.map(Message::assistant));
        }
        finish(messages, row.remove("rejected_response"))
    }
}

/// instruction/input/output rows (ms-swift's `AlpacaPreprocessor`): the query is
/// `instruction\ninput` (or whichever is non-empty).
fn alpaca_to_response(row: &mut Map<String, Value>) -> Result<(), RowError> {
    let instruction = opt_string(row.remove("instruction"), "instruction")?;
    let input = opt_string(row.remove("input"), "input")?;
    if let Some(output) = row.remove("output") {
        row.insert("response".into(), output);
    }
    let query = match (instruction, input) {
        (Some(i), Some(x)) if !i.is_empty() && !x.is_empty() => format!("{i}\n{x}"),
        (Some(i), _) if !i.is_empty() => i,
        (_, Some(x)) if !x.is_empty() => x,
        (Some(i), _) => i,
        (None, Some(x)) => x,
        (None, None) => return Err(fail("alpaca row: both 'instruction' and 'input' are null")),
    };
    row.insert("query".into(), Value::String(query));
    Ok(())
}

fn opt_string(v: Option<Value>, field: &str) -> Result<Option<String>, RowError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(fail(format!(
            "'{field}' must be a string, found {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One (query, response) round of a history; either may be missing.
type Round = (Option<String>, Option<String>);

/// `history`: `[[query, response], ...]`, or that list written as a JSON string.
fn history(v: Option<Value>) -> Result<Vec<Round>, RowError> {
    let v = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => serde_json::from_str(&s)
            .map_err(|e| fail(format!("'history' is a string but not a JSON list: {e}")))?,
        Some(v) => v,
    };
    let Value::Array(pairs) = v else {
        return Err(fail("'history' must be a list of [query, response] pairs"));
    };
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, pair)| match pair {
            Value::Array(p) if p.len() == 2 => {
                let mut it = p.into_iter();
                let q = opt_string(it.next(), "history query")?;
                let r = opt_string(it.next(), "history response")?;
                Ok((q, r))
            }
            _ => Err(fail(format!(
                "history[{i}] must be a [query, response] pair"
            ))),
        })
        .collect()
}

/// `messages`/`conversation(s)` rows, including sharegpt's `{"from", "value"}` and
/// `{"human", "assistant"}` shapes (ms-swift's `MessagesPreprocessor`).
fn messages_row(mut row: Map<String, Value>) -> Result<Sample, RowError> {
    let mut mapping: ColumnMap = aliases(&MESSAGE_KEYS, "messages").collect();
    mapping.extend(aliases(&SYSTEM_KEYS, "system"));
    safe_rename(&mut row, &mapping).map_err(RowError::Format)?;
    let raw = match row.remove("messages") {
        Some(Value::String(s)) => serde_json::from_str(&s)
            .map_err(|e| fail(format!("'messages' is a string but not a JSON list: {e}")))?,
        Some(v) => v,
        None => Value::Null,
    };
    let Value::Array(items) = raw else {
        return Err(fail(format!(
            "'messages' must be a list, found {}",
            kind(&raw)
        )));
    };
    if items.is_empty() {
        return Err(fail("'messages' is empty"));
    }
    let mut items: Vec<Map<String, Value>> = items
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m {
            Value::Object(o) => Ok(o),
            other => Err(fail(format!(
                "messages[{i}] must be an object, found {}",
                kind(&other)
            ))),
        })
        .collect::<Result<_, _>>()?;
    for m in &mut items {
        std_key(m, "role", &["role", "from"]);
        std_key(m, "content", &["content", "value"]);
    }
    let system = opt_string(row.remove("system"), "system")?;
    let messages = if !items[0].contains_key("role") && !items[0].contains_key("content") {
        sharegpt_pairs(items, system)?
    } else {
        role_messages(items, system)?
    };
    finish(messages, row.remove("rejected_response"))
}

/// Moves the first present alias to `key` (later aliases win, as in ms-swift).
fn std_key(m: &mut Map<String, Value>, key: &str, names: &[&str]) {
    for name in names {
        if let Some(v) = m.remove(*name) {
            m.insert(key.to_string(), v);
        }
    }
}

fn sharegpt_pairs(
    items: Vec<Map<String, Value>>,
    system: Option<String>,
) -> Result<Vec<Message>, RowError> {
    let mut out: Vec<Message> = system.into_iter().map(Message::system).collect();
    for (i, mut m) in items.into_iter().enumerate() {
        std_key(&mut m, "user", &["user", "human"]);
        std_key(&mut m, "assistant", &["assistant", "gpt", "bot"]);
        for (key, role) in [("user", Role::User), ("assistant", Role::Assistant)] {
            let content = opt_string(m.remove(key), key)?
                .ok_or_else(|| fail(format!("conversation[{i}] has no '{key}'")))?;
            out.push(Message::new(role, content));
        }
    }
    Ok(out)
}

fn role_messages(
    items: Vec<Map<String, Value>>,
    system: Option<String>,
) -> Result<Vec<Message>, RowError> {
    let mut out = Vec::with_capacity(items.len() + 1);
    let first_is_system = items[0].get("role").and_then(Value::as_str) == Some("system");
    if !first_is_system && let Some(s) = system {
        out.push(Message::system(s));
    }
    for (i, mut m) in items.into_iter().enumerate() {
        let role_name = match m.remove("role") {
            Some(Value::String(r)) => r,
            Some(other) => {
                return Err(fail(format!(
                    "messages[{i}].role must be a string, found {}",
                    kind(&other)
                )));
            }
            None => return Err(fail(format!("messages[{i}] has no 'role'"))),
        };
        let role = match role_name.replace('-', "_").as_str() {
            "user" | "human" => Role::User,
            "assistant" | "gpt" | "bot" => Role::Assistant,
            "system" => Role::System,
            "tool" | "tool_response" | "function_response" | "observation" | "observations" => {
                Role::Tool
            }
            "tool_call" | "function_call" => {
                return Err(fail(format!(
                    "messages[{i}]: role '{role_name}' (agent tool calls) is not supported yet"
                )));
            }
            _ => {
                return Err(fail(format!(
                    "messages[{i}]: unknown role '{role_name}' (expected system, user, assistant or tool)"
                )));
            }
        };
        let content = match m.remove("content") {
            Some(Value::String(c)) => c,
            None | Some(Value::Null) => {
                return Err(fail(format!("messages[{i}] has no 'content'")));
            }
            Some(other) => {
                return Err(fail(format!(
                    "messages[{i}].content must be a string, found {} (multimodal content is not supported)",
                    kind(&other)
                )));
            }
        };
        if m.get("tool_calls").is_some_and(has_value) {
            return Err(fail(format!(
                "messages[{i}].tool_calls (agent tool calls) is not supported yet"
            )));
        }
        let loss = match m.remove("loss") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Some(false),
            Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Some(true),
            Some(other) => {
                return Err(fail(format!(
                    "messages[{i}].loss must be true or false, found {other}"
                )));
            }
        };
        out.push(Message {
            role,
            content,
            loss,
        });
    }
    Ok(out)
}

/// The checks every row gets (ms-swift's `_check_messages`, `_check_rejected_response`).
fn finish(messages: Vec<Message>, rejected: Option<Value>) -> Result<Sample, RowError> {
    if messages.is_empty() {
        return Err(fail("the row has no query or response"));
    }
    let rejected_response = match rejected {
        None => None,
        Some(Value::String(r)) => {
            if messages.last().is_some_and(|m| m.content == r) {
                return Err(fail("'rejected_response' equals the chosen response"));
            }
            Some(r)
        }
        Some(Value::Null) => return Err(fail("'rejected_response' is null")),
        Some(other) => {
            return Err(fail(format!(
                "'rejected_response' must be a string, found {}",
                kind(&other)
            )));
        }
    };
    Ok(Sample {
        messages,
        rejected_response,
    })
}

/// Han characters decide "Chinese row" when a self-cognition row has no `tag`.
fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn run(p: &Preprocess, v: Value) -> Result<Sample, RowError> {
        let mut rng = StdRng::seed_from_u64(0);
        p.sample(v.as_object().unwrap().clone(), &mut rng)
    }

    fn msgs(s: &Sample) -> Vec<(Role, &str)> {
        s.messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect()
    }

    #[test]
    fn query_response_history_system() {
        let s = run(
            &Preprocess::default(),
            json!({"system": "S", "history": [["q1", "r1"]], "query": "q2", "response": "r2"}),
        )
        .unwrap();
        assert_eq!(
            msgs(&s),
            [
                (Role::System, "S"),
                (Role::User, "q1"),
                (Role::Assistant, "r1"),
                (Role::User, "q2"),
                (Role::Assistant, "r2")
            ]
        );
    }

    /// Fields that would change the prompt (tools into the system prompt, images) are
    /// refused by name instead of dropped; empty ones, as text datasets carry them, pass.
    #[test]
    fn tools_images_and_tool_calls_are_refused_unless_empty() {
        let chat =
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]);
        for (row, field) in [
            (
                json!({"messages": chat, "tools": "[{\"name\": \"f\"}]"}),
                "'tools'",
            ),
            (
                json!({"query": "q", "response": "r", "images": ["a.jpg"]}),
                "'images'",
            ),
            (json!({"messages": chat, "videos": ["a.mp4"]}), "'videos'"),
            (
                json!({"messages": [{"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}),
                "messages[1].tool_calls",
            ),
        ] {
            let e = run(&Preprocess::default(), row).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("not supported yet"), "{e}");
        }
        for row in [
            json!({"messages": chat, "tools": null, "images": []}),
            json!({"messages": chat, "tools": "[]", "objects": {}}),
            json!({"messages": [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo", "tool_calls": null}]}),
        ] {
            run(&Preprocess::default(), row).unwrap();
        }
    }

    #[test]
    fn alpaca_joins_instruction_and_input() {
        let s = run(
            &Preprocess::default(),
            json!({"instruction": "Do", "input": "this", "output": "done"}),
        )
        .unwrap();
        assert_eq!(
            msgs(&s),
            [(Role::User, "Do\nthis"), (Role::Assistant, "done")]
        );
        let s = run(
            &Preprocess::default(),
            json!({"instruction": "Do", "input": "", "output": "ok"}),
        )
        .unwrap();
        assert_eq!(msgs(&s)[0], (Role::User, "Do"));
    }

    #[test]
    fn sharegpt_shapes() {
        let s = run(
            &Preprocess::default(),
            json!({"conversation": [{"human": "hi", "assistant": "yo"}], "system": "S"}),
        )
        .unwrap();
        assert_eq!(
            msgs(&s),
            [
                (Role::System, "S"),
                (Role::User, "hi"),
                (Role::Assistant, "yo")
            ]
        );
        let s = run(
            &Preprocess::default(),
            json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}),
        )
        .unwrap();
        assert_eq!(msgs(&s), [(Role::User, "hi"), (Role::Assistant, "yo")]);
    }

    #[test]
    fn messages_keep_loss_flags_and_refuse_bad_roles() {
        let s = run(
            &Preprocess::default(),
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss": false}]}),
        )
        .unwrap();
        assert_eq!(s.messages[1].loss, Some(false));
        let err = run(
            &Preprocess::default(),
            json!({"messages": [{"role": "robot", "content": "a"}]}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown role 'robot'"), "{err}");
        let err = run(
            &Preprocess::default(),
            json!({"messages": [{"content": "a"}, {"role": "user", "content": "x"}]}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no 'role'"), "{err}");
    }

    #[test]
    fn columns_remap_before_detection() {
        let p = Preprocess {
            columns: vec![
                ("q".into(), "query".into()),
                ("a".into(), "response".into()),
            ],
            ..Preprocess::default()
        };
        let s = run(&p, json!({"q": "hi", "a": "yo"})).unwrap();
        assert_eq!(msgs(&s), [(Role::User, "hi"), (Role::Assistant, "yo")]);
    }

    #[test]
    fn rejected_response_must_differ() {
        let s = run(
            &Preprocess::default(),
            json!({"query": "q", "response": "good", "rejected_response": "bad"}),
        )
        .unwrap();
        assert_eq!(s.rejected_response.as_deref(), Some("bad"));
        assert!(
            run(
                &Preprocess::default(),
                json!({"query": "q", "response": "x", "rejected_response": "x"})
            )
            .is_err()
        );
    }

    #[test]
    fn self_cognition_picks_the_name_by_language() {
        let p = Preprocess {
            self_cognition: SelfCognition::from_lists(
                &["小黄".into(), "Xiao Huang".into()],
                &["魔搭".into(), "ModelScope".into()],
            ),
            ..Preprocess::default()
        };
        let en = run(&p, json!({"query": "who are you?", "response": "I am {{NAME}} by {{AUTHOR}}.", "tag": "en"})).unwrap();
        assert_eq!(en.messages[1].content, "I am Xiao Huang by ModelScope.");
        let zh = run(
            &p,
            json!({"query": "你是谁?", "response": "我是{{NAME}}，由{{AUTHOR}}训练。"}),
        )
        .unwrap();
        assert_eq!(zh.messages[1].content, "我是小黄，由魔搭训练。");
    }
}
