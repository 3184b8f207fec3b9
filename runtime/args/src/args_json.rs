//! args.json: every run writes its fully resolved arguments in ms-swift's key names, and
//! either tool can read the other's.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::args::Args;
use crate::command::Command;
use crate::error::{ArgsError, Origin};
use crate::resolve::{Given, GivenValue, Resolved, resolve};

/// The file name ms-swift uses.
pub const FILE_NAME: &str = "args.json";

fn file_error(path: &Path, message: impl Into<String>) -> ArgsError {
    ArgsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `dir/args.json` (pretty, UTF-8 kept as ms-swift's `ensure_ascii=False` does).
/// The file appears complete or not at all: it is written under a temporary name and renamed.
pub fn write(args: &Args, dir: &Path) -> Result<PathBuf, ArgsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e.to_string()))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let text = serde_json::to_string_pretty(&Value::Object(args.to_json()))
        .map_err(|e| file_error(&path, e.to_string()))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| file_error(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e.to_string()))?;
    Ok(path)
}

/// Reads an args.json as a JSON object.
pub fn read(path: &Path) -> Result<Map<String, Value>, ArgsError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(file_error(path, "expected a JSON object of argument names")),
        Err(e) => Err(file_error(
            path,
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )),
    }
}

/// The arguments of `command` saved in an args.json (ours or ms-swift's), plus the keys
/// it holds that `command` does not take (ms-swift writes many HF-internal fields).
pub fn load(command: Command, path: &Path) -> Result<(Resolved, Vec<String>), ArgsError> {
    let saved = read(path)?;
    let mut ignored = Vec::new();
    let mut given = Vec::new();
    for (key, value) in saved {
        if command.args().get(&key).is_none() {
            ignored.push(key);
            continue;
        }
        // `null` is Python's None: the argument was unset, so our default (or rule) applies.
        // ms-swift writes null for some fields we type as non-optional (`hub_private_repo`).
        if value.is_null() {
            continue;
        }
        given.push(Given {
            name: key,
            value: GivenValue::Json(value),
            origin: Origin::ArgsJson {
                path: path.to_path_buf(),
            },
        });
    }
    Ok((resolve(command, given)?, ignored))
}
