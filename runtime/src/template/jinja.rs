//! `--template_backend jinja`: the tokenizer's own `chat_template` rendered with minijinja the
//! way transformers' `apply_chat_template` renders it with jinja2 (trim_blocks, lstrip_blocks,
//! loop controls, Python string methods, `raise_exception`, `strftime_now`, a `tojson` that
//! writes like Python's `json.dumps`) and the tokenizer's special tokens as variables.

use std::collections::BTreeMap;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use super::error::TemplateError;
use super::message::Message;

const NAME: &str = "chat_template";

/// A compiled chat template and the variables it is rendered with.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

/// The chat template source of a tokenizer_config.json: a string, or a list of named
/// templates of which transformers uses `default`.
fn template_source(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// A special token written as `"<s>"` or as an AddedToken object `{"content": "<s>", ...}`.
pub(crate) fn token_text(value: &Json) -> Option<&str> {
    match value {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

impl ChatTemplate {
    /// Compiles the `chat_template` of a tokenizer_config.json.
    pub(crate) fn from_config(config: &Json) -> Result<Self, TemplateError> {
        let source = template_source(config).ok_or_else(|| {
            TemplateError::Jinja("tokenizer_config.json has no chat_template".to_string())
        })?;
        let special_tokens = [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ]
        .into_iter()
        .filter_map(|k| Some((k.to_string(), token_text(config.get(k)?)?.to_string())))
        .collect();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| TemplateError::Jinja(e.to_string()))?,
        );
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source)
            .map_err(|e| TemplateError::Jinja(format!("chat_template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            special_tokens,
        })
    }

    /// Renders a conversation; the generation prompt is added when it does not end with the
    /// assistant (as ms-swift's `_jinja_encode` decides).
    pub(crate) fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let add_generation_prompt = messages
            .last()
            .is_none_or(|m| m.role != super::Role::Assistant);
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Jinja(e.to_string()))?;
        template
            .render(ctx)
            .map_err(|e| TemplateError::Jinja(format!("rendering chat_template failed: {e}")))
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> Result<String, Error> {
    use std::fmt::Write;
    // chrono reports a bad format item as a fmt::Error; `to_string` would panic on it.
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format '{format}'"),
        )
    })?;
    Ok(out)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    py_dumps(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` layout: `", "`/`": "` separators without indent, `","` and newlines
/// with it; strings escaped as serde_json escapes them (the same rules as Python's with
/// `ensure_ascii=False`).
fn py_dumps(value: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_dumps(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                py_dumps(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_matches_python_json_dumps_layout() {
        let v = json!({"name": "f", "args": [1, "é\n"], "empty": {}});
        let mut flat = String::new();
        py_dumps(&v, None, 0, &mut flat);
        assert_eq!(flat, r#"{"name": "f", "args": [1, "é\n"], "empty": {}}"#);
        let mut pretty = String::new();
        py_dumps(&json!({"a": [1]}), Some(2), 0, &mut pretty);
        assert_eq!(pretty, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn renders_with_trim_blocks_and_python_methods() {
        let config = json!({
            "eos_token": {"content": "</s>"},
            "chat_template": "{% for m in messages %}\n{{ m.role.upper() }}: {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}"
        });
        let t = ChatTemplate::from_config(&config).unwrap();
        let text = t.render(&[Message::user("  hi ")]).unwrap();
        assert_eq!(text, "USER: hi</s>\nA:");
    }

    #[test]
    fn strftime_now_refuses_bad_formats_without_panicking() {
        let config = json!({"chat_template": "{{ strftime_now('%Y') }}|{{ strftime_now('%Q') }}"});
        let t = ChatTemplate::from_config(&config).unwrap();
        let err = t.render(&[Message::user("x")]).unwrap_err();
        assert!(err.to_string().contains("bad format '%Q'"), "{err}");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let config = json!({"chat_template": "{{ raise_exception('no system here') }}"});
        let t = ChatTemplate::from_config(&config).unwrap();
        let err = t.render(&[Message::user("x")]).unwrap_err();
        assert!(err.to_string().contains("no system here"), "{err}");
    }
}
