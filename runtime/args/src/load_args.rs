//! ms-swift's `load_args`: when `--resume_from_checkpoint`, `--adapters` or `--model` is a
//! folder with `args.json`, fill the base arguments the user left unset from it.
//!
//! Mirrors `BaseArguments.load_args_from_ckpt`: only `BaseArguments` fields, never generation
//! arguments or `adapters`; data arguments only with `--load_data_args`; `max_length` only when
//! training. A field is filled when it is still `None`/empty, or always for the few keys
//! ms-swift force-loads (e.g. `train_type`) — unless the user gave it explicitly.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::args::{Args, Source};
use crate::args_json;
use crate::error::{ArgsError, Origin};
use crate::group::Group;
use crate::value::coerce;

/// Keys ms-swift loads from a checkpoint even when they hold a non-`None` default.
const FORCE_LOAD: &[&str] = &[
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "train_type",
    "tuner_backend",
    "model_name",
    "model_author",
    "split_dataset_ratio",
    "tools_prompt",
    "use_chat_template",
];

/// The first local folder among the checkpoint candidates that holds an args.json.
pub fn checkpoint_dir(args: &Args) -> Option<PathBuf> {
    let owns = |n: &str| args.command().args().get(n).is_some();
    let mut candidates: Vec<String> = Vec::new();
    if owns("resume_from_checkpoint")
        && let Some(c) = args.str("resume_from_checkpoint")
    {
        candidates.push(c.to_string());
    }
    if owns("adapters") {
        // `name=path` (multi-LoRA serving) names the adapter; its folder is the path, as
        // ms-swift parses it before load_args.
        candidates.extend(args.strings("adapters").into_iter().map(|a| {
            a.split_once('=')
                .map_or(a.clone(), |(_, path)| path.trim().to_string())
        }));
    }
    if owns("model")
        && let Some(m) = args.str("model")
    {
        candidates.push(m.to_string());
    }
    candidates
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("args.json").is_file())
}

fn eligible(args: &Args, name: &str, group: Group) -> bool {
    if !group.in_base_arguments() || group == Group::Generation || name == "adapters" {
        return false;
    }
    if group == Group::Data && !args.bool("load_data_args") {
        return false;
    }
    if name == "max_length" && !args.command().is_training() {
        return false;
    }
    // The table's own switches are never taken from a checkpoint.
    !matches!(name, "load_args" | "load_data_args")
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(|a| a.is_empty())
}

/// Applies load_args; returns the args.json it read.
pub(crate) fn apply(args: &mut Args) -> Result<Option<PathBuf>, ArgsError> {
    if args.command().args().get("load_args").is_none() || !args.bool("load_args") {
        return Ok(None);
    }
    let Some(dir) = checkpoint_dir(args) else {
        return Ok(None);
    };
    let path = dir.join("args.json");
    fill_from(args, &path)?;
    Ok(Some(path))
}

fn fill_from(args: &mut Args, path: &Path) -> Result<(), ArgsError> {
    let saved = args_json::read(path)?;
    let command = args.command();
    for (key, saved_value) in &saved {
        let Some(spec) = command.args().get(key) else {
            continue;
        };
        if saved_value.is_null()
            || !eligible(args, spec.name, spec.group)
            || args.is_given(spec.name)
            || !(is_empty(args.get(spec.name)) || FORCE_LOAD.contains(&spec.name))
        {
            continue;
        }
        let origin = Origin::ArgsJson {
            path: path.to_path_buf(),
        };
        let value = coerce(spec, saved_value).map_err(|e| ArgsError::BadValue {
            name: spec.name.to_string(),
            value: e.value,
            expected: e.expected,
            origin: origin.clone(),
        })?;
        args.set(spec.name, value, Source::Loaded(origin));
    }
    Ok(())
}
