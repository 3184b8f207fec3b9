//! Model-specific parameters: `--model_kwargs '{"fps_max_frames": 12}'` or `FPS_MAX_FRAMES=12`.
//! `--model_kwargs` wins over the environment, as in ms-swift (which copies it into the env).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::args::Args;
use crate::error::{ArgsError, Origin};
use crate::group::Group;
use crate::spec::{ArgSpec, ModelKwarg};
use crate::suggest::closest;
use crate::table::MODEL_KWARGS;
use crate::value::{coerce, parse_word};

fn find(name: &str) -> Option<&'static ModelKwarg> {
    MODEL_KWARGS.iter().find(|k| k.name == name)
}

/// A table row for a kwarg so the normal value rules apply to it.
fn as_spec(kw: &'static ModelKwarg) -> ArgSpec {
    ArgSpec::new(Group::Model, kw.name, kw.ty, kw.default, kw.help)
}

/// Checks the keys and values of `--model_kwargs`.
pub(crate) fn check(args: &Args) -> Result<(), ArgsError> {
    if args.command().args().get("model_kwargs").is_none() {
        return Ok(());
    }
    let Some(map) = args.dict("model_kwargs") else {
        return Ok(());
    };
    let origin = args
        .source("model_kwargs")
        .map(|s| s.origin())
        .unwrap_or(Origin::Internal);
    for (key, value) in map {
        let upper = key.to_ascii_uppercase();
        let Some(kw) = find(&upper) else {
            let hint = closest(&upper, MODEL_KWARGS.iter().map(|k| k.name))
                .map(|s| format!("; did you mean '{}'?", s.to_ascii_lowercase()))
                .unwrap_or_default();
            return Err(ArgsError::Conflict {
                message: format!("unknown key '{key}' in --model_kwargs {origin}{hint}"),
            });
        };
        coerce(&as_spec(kw), value).map_err(|e| ArgsError::BadValue {
            name: format!("model_kwargs {key}"),
            value: e.value,
            expected: e.expected,
            origin: origin.clone(),
        })?;
    }
    Ok(())
}

/// The model-specific parameters in effect: `--model_kwargs` first, then the environment.
/// Only names that are set somewhere appear; a malformed environment value is an error
/// naming the variable.
pub fn effective(
    args: &Args,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<&'static str, Value>, ArgsError> {
    let given = args.dict("model_kwargs");
    let mut out = BTreeMap::new();
    for kw in MODEL_KWARGS {
        if out.contains_key(kw.name) {
            continue; // the same name under another model family
        }
        let spec = as_spec(kw);
        let from_args = given.and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(kw.name))
                .map(|(_, v)| v)
        });
        let value = match (from_args, env(kw.name)) {
            (Some(v), _) => coerce(&spec, v).ok(),
            (None, Some(text)) => {
                Some(parse_word(&spec, &text).map_err(|e| ArgsError::BadValue {
                    name: kw.name.to_string(),
                    value: e.value,
                    expected: e.expected,
                    origin: Origin::Resource {
                        field: format!("environment variable {}", kw.name),
                    },
                })?)
            }
            (None, None) => None,
        };
        if let Some(v) = value {
            out.insert(kw.name, v);
        }
    }
    Ok(out)
}
