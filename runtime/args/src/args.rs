//! `Args`: the resolved arguments of one command, with where each value came from.
//! Engine code reads typed values through the accessors (or typed views built from them),
//! never raw strings.

use serde_json::{Map, Value};

use crate::command::Command;
use crate::error::Origin;
use crate::spec::ArgSpec;
use crate::value::default_json;

/// Where a resolved value came from, lowest precedence first.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The table's default.
    Default,
    /// Computed from other arguments (`derive.rs`), or forced by the command (`swift pt`).
    Derived,
    /// Filled by `load_args` from a checkpoint's args.json.
    Loaded(Origin),
    /// Given by the user: config file, command line, or a resource's `spec.args`.
    Given(Origin),
}

impl Source {
    /// True when the user gave the value (it must not be overwritten by defaults or load_args).
    pub fn is_given(&self) -> bool {
        matches!(self, Source::Given(_))
    }

    /// The origin to name in an error about this value.
    pub fn origin(&self) -> Origin {
        match self {
            Source::Given(o) | Source::Loaded(o) => o.clone(),
            Source::Default | Source::Derived => Origin::Internal,
        }
    }
}

/// The resolved arguments of one `swift` command.
#[derive(Debug, Clone)]
pub struct Args {
    command: Command,
    /// One entry per argument of the command, in table order.
    entries: Vec<(Value, Source)>,
}

impl Args {
    /// Every argument at its table default.
    pub fn defaults(command: Command) -> Self {
        let entries = command
            .args()
            .iter()
            .map(|spec| (default_json(spec), Source::Default))
            .collect();
        Args { command, entries }
    }

    /// The command these arguments belong to.
    pub fn command(&self) -> Command {
        self.command
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.command.args().position(name)
    }

    /// The value of `name` (`Null` when unset). Asking for an argument the command does not
    /// own is a programming error: it fails tests in debug builds and reads as `Null`.
    pub fn get(&self, name: &str) -> &Value {
        match self.position(name) {
            Some(i) => &self.entries[i].0,
            None => {
                debug_assert!(false, "`swift {}` has no argument '{name}'", self.command);
                &Value::Null
            }
        }
    }

    /// The value of `name`, or `None` when the command does not own it. For code that works
    /// across commands (derived defaults, validation); engine code uses the typed accessors.
    pub fn lookup(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|i| &self.entries[i].0)
    }

    /// Where the value of `name` came from.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.position(name).map(|i| &self.entries[i].1)
    }

    /// True when the user gave `name` explicitly.
    pub fn is_given(&self, name: &str) -> bool {
        self.source(name).is_some_and(Source::is_given)
    }

    /// Records a value the engine resolved itself (e.g. the detected `model_type`), so
    /// args.json carries it as ms-swift's does and `load_args` finds it later.
    pub fn set_resolved(&mut self, name: &str, value: Value) {
        self.set(name, value, Source::Derived);
    }

    /// Sets a value; the caller has already checked it against the row's type.
    pub(crate) fn set(&mut self, name: &str, value: Value, source: Source) {
        if let Some(i) = self.position(name) {
            self.entries[i] = (value, source);
        }
    }

    /// A string argument, `None` when unset.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }

    /// A boolean argument; unset reads as false.
    pub fn bool(&self, name: &str) -> bool {
        self.get(name).as_bool().unwrap_or(false)
    }

    /// An optional boolean argument.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        self.get(name).as_bool()
    }

    /// An integer argument, `None` when unset.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).as_i64()
    }

    /// A float (or number) argument, `None` when unset.
    pub fn float(&self, name: &str) -> Option<f64> {
        self.get(name).as_f64()
    }

    /// A list of strings; unset reads as empty.
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A JSON object argument, `None` when unset.
    pub fn dict(&self, name: &str) -> Option<&Map<String, Value>> {
        self.get(name).as_object()
    }

    /// Every (row, value, source), in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static ArgSpec, &Value, &Source)> {
        self.command
            .args()
            .iter()
            .zip(self.entries.iter())
            .map(|(spec, (v, s))| (spec, v, s))
    }

    /// The arguments as ms-swift writes them to args.json: every name, resolved.
    pub fn to_json(&self) -> Map<String, Value> {
        self.iter()
            .map(|(spec, v, _)| (spec.name.to_string(), v.clone()))
            .collect()
    }

    /// Only the values that differ from the table default: what to pass on to another process.
    pub fn non_default(&self) -> Map<String, Value> {
        self.iter()
            .filter(|(spec, v, _)| **v != default_json(spec))
            .map(|(spec, v, _)| (spec.name.to_string(), v.clone()))
            .collect()
    }
}
