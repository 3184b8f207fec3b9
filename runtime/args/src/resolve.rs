//! The resolution pipeline: table defaults, then the user's values (config file, then command
//! line, or a resource's `spec.args`), then `load_args`, derived defaults, values forced by the
//! command, and validation.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::args::{Args, Source};
use crate::command::{Command, owners};
use crate::error::{ArgsError, Origin};
use crate::value::{Invalid, coerce, parse_words};
use crate::{derive, load_args, suggest, validate};

/// One value the user gave, before it is checked against the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    /// The name as written (`lora_rank`, `lora-rank` or `--lora_rank`).
    pub name: String,
    pub value: GivenValue,
    pub origin: Origin,
}

/// How a given value was written.
#[derive(Debug, Clone, PartialEq)]
pub enum GivenValue {
    /// Words after `--name` on a command line.
    Words(Vec<String>),
    /// A JSON/YAML value from a file or a resource.
    Json(Value),
}

/// The result of resolution: the arguments and the args.json `load_args` read, if any.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub args: Args,
    pub loaded_from: Option<PathBuf>,
}

/// `lora-rank` / `--lora_rank` -> `lora_rank`.
pub fn normalize_name(name: &str) -> String {
    name.trim_start_matches('-').replace('-', "_")
}

/// The error for a name the command does not take.
pub(crate) fn unknown(command: Command, name: &str, origin: Origin) -> ArgsError {
    let owners = owners(name);
    // A name that belongs to another command is not a typo: say where it belongs instead.
    let suggestion = if owners.is_empty() {
        suggest::closest(name, command.args().iter().map(|s| s.name))
    } else {
        None
    };
    ArgsError::UnknownArgument {
        name: name.to_string(),
        command,
        origin,
        suggestion,
        owners,
    }
}

fn bad_value(name: &str, e: Invalid, origin: Origin) -> ArgsError {
    ArgsError::BadValue {
        name: name.to_string(),
        value: e.value,
        expected: e.expected,
        origin,
    }
}

/// Checks one given value and stores it.
fn apply(args: &mut Args, given: Given) -> Result<(), ArgsError> {
    let command = args.command();
    let name = normalize_name(&given.name);
    let Some(spec) = command.args().get(&name) else {
        return Err(unknown(command, &name, given.origin));
    };
    let value = match &given.value {
        GivenValue::Words(words) => parse_words(spec, words),
        GivenValue::Json(v) => coerce(spec, v),
    }
    .map_err(|e| bad_value(spec.name, e, given.origin.clone()))?;
    args.set(spec.name, value, Source::Given(given.origin));
    Ok(())
}

/// Resolves the arguments of `command` from what the user gave (later entries win).
pub fn resolve(command: Command, given: Vec<Given>) -> Result<Resolved, ArgsError> {
    let mut args = Args::defaults(command);
    for g in given {
        apply(&mut args, g)?;
    }
    let loaded_from = load_args::apply(&mut args)?;
    derive::apply(&mut args);
    force_command_values(&mut args);
    validate::check(&args)?;
    Ok(Resolved { args, loaded_from })
}

/// Resolves a resource's `spec.args` object (the operator validates CRs with this).
/// `field` names the object in errors, e.g. `spec.args`.
pub fn resolve_map(
    command: Command,
    map: &Map<String, Value>,
    field: &str,
) -> Result<Resolved, ArgsError> {
    let given = map
        .iter()
        .map(|(k, v)| Given {
            name: k.clone(),
            value: GivenValue::Json(v.clone()),
            origin: Origin::Resource {
                field: format!("{field}.{k}"),
            },
        })
        .collect();
    resolve(command, given)
}

/// `swift pt` trains with the generation template on every token (ms-swift's SwiftPt).
/// A conflicting user value was already refused in validation; here the command's values win.
fn force_command_values(args: &mut Args) {
    if args.command() == Command::Pt {
        if !args.is_given("use_chat_template") {
            args.set("use_chat_template", json!(false), Source::Derived);
        }
        if !args.is_given("loss_scale") {
            args.set("loss_scale", json!("all"), Source::Derived);
        }
    }
}
