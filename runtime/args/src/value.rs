//! Turning command-line words and config/JSON values into typed JSON values, one rule per
//! `ValueType`. Errors say what was expected; the caller adds the argument name and origin.

use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::spec::{ArgSpec, DefaultValue, Scalar, ValueType};

/// A value that could not be read; `expected` describes what would have been accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub value: String,
    pub expected: String,
}

fn invalid(value: impl Into<String>, expected: impl Into<String>) -> Invalid {
    Invalid {
        value: value.into(),
        expected: expected.into(),
    }
}

/// The JSON form of a row's default (`null` for `None` and derived defaults).
pub fn default_json(spec: &ArgSpec) -> Value {
    match spec.default {
        DefaultValue::None | DefaultValue::Derived(_) => Value::Null,
        DefaultValue::Bool(b) => Value::Bool(b),
        DefaultValue::Int(i) => Value::from(i),
        DefaultValue::Float(f) => float_json(f),
        DefaultValue::Str(s) => Value::from(s),
        DefaultValue::List(l) => Value::Array(l.iter().map(|s| Value::from(*s)).collect()),
    }
}

/// Whether the argument may be `None` (its default is `None` or derived).
pub fn is_optional(spec: &ArgSpec) -> bool {
    matches!(spec.default, DefaultValue::None | DefaultValue::Derived(_))
}

fn float_json(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn is_none_word(s: &str) -> bool {
    matches!(s, "None" | "none" | "null" | "NULL" | "Null")
}

/// Parses the words that followed `--name` on the command line.
pub fn parse_words(spec: &ArgSpec, words: &[String]) -> Result<Value, Invalid> {
    match spec.ty {
        ValueType::List(scalar) => {
            if words.len() == 1 && is_none_word(&words[0]) && is_optional(spec) {
                return Ok(Value::Null);
            }
            words
                .iter()
                .map(|w| parse_scalar(scalar, w))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        _ => match words {
            // A bare `--flag` means true, as in HfArgumentParser.
            [] if spec.ty == ValueType::Bool => Ok(Value::Bool(true)),
            [one] => parse_word(spec, one),
            _ => Err(invalid(
                words.join(" "),
                format!("one value ({})", spec.type_name()),
            )),
        },
    }
}

/// Parses one word for a non-list argument.
pub fn parse_word(spec: &ArgSpec, word: &str) -> Result<Value, Invalid> {
    if let ValueType::Choice(choices) = spec.ty
        && choices.contains(&word)
    {
        return Ok(Value::from(word));
    }
    if is_none_word(word) && is_optional(spec) {
        return Ok(Value::Null);
    }
    match spec.ty {
        ValueType::Bool => parse_bool(word).map(Value::Bool),
        ValueType::Int => parse_int(word),
        ValueType::Float => parse_float(word),
        ValueType::Number => parse_int(word).or_else(|_| parse_float(word)),
        ValueType::Str => Ok(Value::from(word)),
        ValueType::Choice(choices) => Err(invalid(word, one_of(choices))),
        ValueType::List(scalar) => parse_scalar(scalar, word).map(|v| Value::Array(vec![v])),
        ValueType::Dict => parse_dict(word),
        ValueType::StrOrDict => {
            if word.trim_start().starts_with('{') || is_json_file(word) {
                parse_dict(word)
            } else {
                Ok(Value::from(word))
            }
        }
        ValueType::InitWeights => parse_init_weights(word),
    }
}

/// Checks and normalises a value that arrived as JSON/YAML (config file, args.json, a CR).
/// Strings are read as if typed on the command line, so `lora_rank: "8"` works too.
pub fn coerce(spec: &ArgSpec, value: &Value) -> Result<Value, Invalid> {
    if value.is_null() {
        return if is_optional(spec) || matches!(spec.ty, ValueType::List(_)) {
            Ok(Value::Null)
        } else {
            Err(invalid("null", spec.type_name()))
        };
    }
    match (spec.ty, value) {
        (ValueType::List(scalar), Value::Array(items)) => items
            .iter()
            .map(|v| coerce_scalar(scalar, v))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (ValueType::List(scalar), v) => coerce_scalar(scalar, v).map(|v| Value::Array(vec![v])),
        (ValueType::Dict | ValueType::StrOrDict, Value::Object(_)) => Ok(value.clone()),
        (ValueType::Bool | ValueType::InitWeights, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (ValueType::Int, Value::Number(n)) => number_as_int(n),
        (ValueType::Float, Value::Number(n)) => Ok(float_json(n.as_f64().unwrap_or(f64::NAN))),
        (ValueType::Number, Value::Number(_)) => Ok(value.clone()),
        (ValueType::Str | ValueType::StrOrDict, Value::Number(n)) => Ok(Value::from(n.to_string())),
        (_, Value::String(s)) => parse_word(spec, s),
        (_, other) => Err(invalid(other.to_string(), spec.type_name())),
    }
}

fn coerce_scalar(scalar: Scalar, value: &Value) -> Result<Value, Invalid> {
    match (scalar, value) {
        (_, Value::String(s)) => parse_scalar(scalar, s),
        (Scalar::Str, Value::Number(n)) => Ok(Value::from(n.to_string())),
        (Scalar::Int, Value::Number(n)) => number_as_int(n),
        (Scalar::Float, Value::Number(n)) => Ok(float_json(n.as_f64().unwrap_or(f64::NAN))),
        (_, other) => Err(invalid(other.to_string(), scalar_expected(scalar))),
    }
}

fn parse_scalar(scalar: Scalar, word: &str) -> Result<Value, Invalid> {
    match scalar {
        Scalar::Str => Ok(Value::from(word)),
        Scalar::Int => parse_int(word),
        Scalar::Float => parse_float(word),
        Scalar::Choice(choices) if choices.contains(&word) => Ok(Value::from(word)),
        Scalar::Choice(choices) => Err(invalid(word, one_of(choices))),
    }
}

fn scalar_expected(scalar: Scalar) -> String {
    match scalar {
        Scalar::Str => "a string".into(),
        Scalar::Int => "an integer".into(),
        Scalar::Float => "a number".into(),
        Scalar::Choice(c) => one_of(c),
    }
}

fn number_as_int(n: &Number) -> Result<Value, Invalid> {
    if let Some(i) = n.as_i64() {
        return Ok(Value::from(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
        _ => Err(invalid(n.to_string(), "an integer")),
    }
}

fn one_of(choices: &[&str]) -> String {
    format!("one of: {}", choices.join(", "))
}

/// HfArgumentParser's `string_to_bool`.
pub fn parse_bool(word: &str) -> Result<bool, Invalid> {
    match word.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "0" => Ok(false),
        _ => Err(invalid(word, "true or false")),
    }
}

fn parse_int(word: &str) -> Result<Value, Invalid> {
    word.trim()
        .parse::<i64>()
        .map(Value::from)
        .map_err(|_| invalid(word, "an integer"))
}

fn parse_float(word: &str) -> Result<Value, Invalid> {
    match word.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(float_json(f)),
        _ => Err(invalid(word, "a number")),
    }
}

fn is_json_file(word: &str) -> bool {
    word.ends_with(".json") && Path::new(word).is_file()
}

/// A dict: a JSON object, a path to a JSON file, or a Python literal such as
/// `{0: "20GB", 'a': True}` (the seed's `--max_memory` example).
pub fn parse_dict(word: &str) -> Result<Value, Invalid> {
    const EXPECTED: &str = "a JSON object (e.g. '{\"key\": 1}') or the path of a JSON file";
    let trimmed = word.trim();
    if !trimmed.starts_with('{') {
        if Path::new(trimmed).is_file() {
            let text = std::fs::read_to_string(trimmed)
                .map_err(|e| invalid(word, format!("{EXPECTED} ({e})")))?;
            return match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err(invalid(
                    word,
                    format!("{EXPECTED} (the file holds no object)"),
                )),
                Err(e) => Err(invalid(word, format!("{EXPECTED} ({e})"))),
            };
        }
        return Err(invalid(word, EXPECTED));
    }
    let parsed = serde_json::from_str::<Map<String, Value>>(trimmed).or_else(|_| {
        python_literal_to_json(trimmed)
            .and_then(|j| serde_json::from_str(&j).ok())
            .ok_or(())
    });
    match parsed {
        Ok(map) => Ok(Value::Object(map)),
        Err(()) => Err(invalid(word, EXPECTED)),
    }
}

/// Rewrites a Python dict literal into JSON: single-quoted strings, `True/False/None`, and
/// bare number keys (`{0: "20GB"}`). Returns `None` when the text is not such a literal.
fn python_literal_to_json(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let (s, next) = read_quoted(&chars, i)?;
            out.push_str(&serde_json::to_string(&s).ok()?);
            i = next;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push_str(match word.as_str() {
                "True" | "true" => "true",
                "False" | "false" => "false",
                "None" | "null" => "null",
                _ => return None,
            });
        } else if c.is_ascii_digit() || c == '-' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '-' | '+'))
            {
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            // A number followed by ':' is an object key; JSON keys must be strings.
            if j < chars.len() && chars[j] == ':' {
                out.push_str(&format!("\"{number}\""));
            } else {
                out.push_str(&number);
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(out)
}

fn read_quoted(chars: &[char], start: usize) -> Option<(String, usize)> {
    let quote = chars[start];
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                s.push(chars[i + 1]);
                i += 2;
            }
            c if c == quote => return Some((s, i + 1)),
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    None
}

/// LoRA `init_weights`: a bool or a method name (`pissa_niter_16` included).
fn parse_init_weights(word: &str) -> Result<Value, Invalid> {
    const METHODS: &[&str] = &["gaussian", "pissa", "olora", "loftq", "lora-ga", "bat"];
    if let Ok(b) = parse_bool(word) {
        return Ok(Value::Bool(b));
    }
    let niter = word
        .strip_prefix("pissa_niter_")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if METHODS.contains(&word) || niter {
        Ok(Value::from(word))
    } else {
        Err(invalid(
            word,
            "true, false, gaussian, pissa, pissa_niter_N, olora, loftq, lora-ga or bat",
        ))
    }
}

/// The words a value is written as on the command line (`--name w1 w2 ...`); the inverse of
/// `parse_words` so a resolved argument can be passed on to another `swift` process.
pub fn to_words(value: &Value) -> Vec<String> {
    match value {
        Value::Null => vec!["None".into()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Number(n) => vec![n.to_string()],
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(to_words).collect(),
        Value::Object(_) => vec![value.to_string()],
    }
}

/// The value as text, for error messages and support checks (`true`, `lora`, `a b`).
pub fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use serde_json::json;

    fn spec(cmd: Command, name: &str) -> &'static ArgSpec {
        cmd.args().get(name).expect("argument exists")
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bools_accept_hf_spellings_and_bare_flags() {
        let s = spec(Command::Sft, "streaming");
        assert_eq!(parse_words(s, &[]).unwrap(), json!(true));
        assert_eq!(parse_words(s, &words(&["false"])).unwrap(), json!(false));
        assert_eq!(parse_words(s, &words(&["True"])).unwrap(), json!(true));
        assert_eq!(parse_words(s, &words(&["1"])).unwrap(), json!(true));
        let err = parse_words(s, &words(&["maybe"])).unwrap_err();
        assert_eq!(err.expected, "true or false");
    }

    #[test]
    fn lists_take_space_separated_words() {
        let s = spec(Command::Sft, "dataset");
        assert_eq!(
            parse_words(s, &words(&["a.jsonl", "b.jsonl#10"])).unwrap(),
            json!(["a.jsonl", "b.jsonl#10"])
        );
        let ints = spec(Command::Sample, "data_range");
        assert_eq!(
            parse_words(ints, &words(&["2", "3"])).unwrap(),
            json!([2, 3])
        );
        assert!(parse_words(ints, &words(&["2", "x"])).is_err());
    }

    #[test]
    fn dicts_accept_json_python_literals_and_files() {
        let s = spec(Command::Sft, "model_kwargs");
        assert_eq!(
            parse_word(s, r#"{"fps_max_frames": 12}"#).unwrap(),
            json!({"fps_max_frames": 12})
        );
        let mm = spec(Command::Sft, "max_memory");
        assert_eq!(
            parse_word(mm, r#"{0: "20GB", 1: '20GB', 'x': True}"#).unwrap(),
            json!({"0": "20GB", "1": "20GB", "x": true})
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kw.json");
        std::fs::write(&path, r#"{"a": [1, 2]}"#).unwrap();
        assert_eq!(
            parse_word(s, path.to_str().unwrap()).unwrap(),
            json!({"a": [1, 2]})
        );
        assert!(parse_word(s, "{not json").is_err());
        assert!(parse_word(s, "no-such-file.json").is_err());
    }

    #[test]
    fn numbers_and_choices_are_checked() {
        let rank = spec(Command::Sft, "lora_rank");
        assert_eq!(parse_word(rank, "16").unwrap(), json!(16));
        assert_eq!(parse_word(rank, "1.5").unwrap_err().expected, "an integer");
        let lr = spec(Command::Sft, "learning_rate");
        assert_eq!(parse_word(lr, "1e-4").unwrap(), json!(0.0001));
        assert!(parse_word(lr, "nan").is_err());
        let dtype = spec(Command::Sft, "torch_dtype");
        assert_eq!(
            parse_word(dtype, "fp16").unwrap_err().expected,
            "one of: float16, bfloat16, float32"
        );
        assert_eq!(parse_word(dtype, "None").unwrap(), Value::Null);
        let steps = spec(Command::Sft, "save_steps");
        assert_eq!(parse_word(steps, "100").unwrap(), json!(100));
        assert_eq!(parse_word(steps, "0.25").unwrap(), json!(0.25));
    }

    #[test]
    fn init_weights_takes_bools_and_methods() {
        let s = spec(Command::Sft, "init_weights");
        assert_eq!(parse_word(s, "false").unwrap(), json!(false));
        assert_eq!(
            parse_word(s, "pissa_niter_16").unwrap(),
            json!("pissa_niter_16")
        );
        assert!(parse_word(s, "pissa_niter_").is_err());
        assert!(parse_word(s, "xavier").is_err());
    }

    #[test]
    fn coerce_reads_yaml_and_json_values() {
        let rank = spec(Command::Sft, "lora_rank");
        assert_eq!(coerce(rank, &json!("8")).unwrap(), json!(8));
        assert_eq!(coerce(rank, &json!(8.0)).unwrap(), json!(8));
        assert!(coerce(rank, &json!(true)).is_err());
        assert!(coerce(rank, &Value::Null).is_err());
        let ds = spec(Command::Sft, "dataset");
        assert_eq!(coerce(ds, &json!("a.jsonl")).unwrap(), json!(["a.jsonl"]));
        let lr = spec(Command::Sft, "learning_rate");
        assert_eq!(coerce(lr, &json!(1)).unwrap(), json!(1.0));
    }

    #[test]
    fn words_round_trip() {
        for (name, value) in [
            ("dataset", json!(["a.jsonl", "b.jsonl"])),
            ("lora_rank", json!(8)),
            ("streaming", json!(true)),
            ("model_kwargs", json!({"a": 1})),
            ("learning_rate", json!(0.0001)),
            ("torch_dtype", Value::Null),
        ] {
            let s = spec(Command::Sft, name);
            assert_eq!(parse_words(s, &to_words(&value)).unwrap(), value, "{name}");
        }
    }
}
