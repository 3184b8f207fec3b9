//! `--config file.yaml|json`: a mapping of argument names to values. Command-line flags
//! override it. Errors name the file and, where it can be found, the line.

use std::path::Path;

use serde_json::Value;

use crate::error::{ArgsError, Origin};
use crate::resolve::{Given, GivenValue};

fn file_error(path: &Path, message: impl Into<String>) -> ArgsError {
    ArgsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The 1-based line where `key` is defined, found by a plain scan of the text.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let l = line.trim_start().trim_start_matches(['"', '\'']);
            l.strip_prefix(key)
                .map(|rest| {
                    rest.trim_start_matches(['"', '\''])
                        .trim_start()
                        .starts_with(':')
                })
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

/// Reads the config file into given values, in file order.
pub fn read(path: &Path) -> Result<Vec<Given>, ArgsError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value: Value = if is_json {
        serde_json::from_str(&text).map_err(|e| {
            file_error(
                path,
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?
    } else {
        serde_norway::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            file_error(path, format!("invalid YAML{at}: {e}"))
        })?
    };
    let map = match value {
        Value::Object(map) => map,
        Value::Null => Default::default(),
        _ => {
            return Err(file_error(
                path,
                "expected a mapping of argument names to values (e.g. 'lora_rank: 8')",
            ));
        }
    };
    Ok(map
        .into_iter()
        .map(|(key, value)| Given {
            origin: Origin::ConfigFile {
                path: path.to_path_buf(),
                line: line_of(&text, &key),
            },
            name: key,
            value: GivenValue::Json(value),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn finds_yaml_and_json_keys() {
        let yaml = "model: a\n# c\nlora_rank: 8\n";
        assert_eq!(line_of(yaml, "lora_rank"), Some(3));
        let json = "{\n  \"model\": \"a\",\n  \"dataset\": []\n}";
        assert_eq!(line_of(json, "dataset"), Some(3));
        assert_eq!(line_of(yaml, "lora"), None);
    }
}
