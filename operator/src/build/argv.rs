//! The `swift <command> --<name> <words...>` command line of a pod, built from a resource's
//! `args` plus what the operator adds (storage URIs, `--resume_from_checkpoint`, the shard's
//! `--data_range`), and validated with the same table and rules as the `swift` CLI.

use kubeswift_args::resolve::normalize_name;
use kubeswift_args::value::to_words;
use kubeswift_args::{ArgsError, Command, resolve_map};
use serde_json::{Map, Value};

use crate::build::BuildError;

/// Ordered arguments: the user's first, in the order written, then the operator's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArgList {
    entries: Map<String, Value>,
}

impl ArgList {
    /// The user's `spec.args`, names normalised (`lora-rank` -> `lora_rank`).
    pub fn from_spec(args: &Map<String, Value>) -> Self {
        let entries = args
            .iter()
            .map(|(k, v)| (normalize_name(k), v.clone()))
            .collect();
        ArgList { entries }
    }

    /// Whether the user or the operator set `name`.
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries.get(name)
    }

    /// Adds an argument the operator derives from another spec field (`from`); refuses one
    /// the user already set in `spec.args`, since two sources for one value is ambiguous.
    pub fn add_from(&mut self, name: &str, value: Value, from: &str) -> Result<(), BuildError> {
        if self.has(name) {
            return Err(BuildError::Conflict {
                field: format!("spec.args.{name}"),
                message: format!("is also set by {from}; set it in one place"),
            });
        }
        self.entries.insert(name.to_string(), value);
        Ok(())
    }

    /// Adds an argument only the operator may set (e.g. `resume_from_checkpoint`).
    pub fn add_reserved(&mut self, name: &str, value: Value, why: &str) -> Result<(), BuildError> {
        if self.has(name) {
            return Err(BuildError::Conflict {
                field: format!("spec.args.{name}"),
                message: format!("is set by the operator ({why}); remove it from spec.args"),
            });
        }
        self.entries.insert(name.to_string(), value);
        Ok(())
    }

    /// Removes `name` (after validating a placeholder the pod fills in at run time).
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.entries.shift_remove(name)
    }

    /// Checks every argument as `swift <command>` would; errors name `spec.args.<name>`.
    pub fn validate(&self, command: Command) -> Result<(), ArgsError> {
        resolve_map(command, &self.entries, "spec.args").map(|_| ())
    }

    /// `[<command>, --name, words..., ...]`: the container's args after `swift`.
    pub fn to_argv(&self, command: Command) -> Vec<String> {
        let mut argv = vec![command.name().to_string()];
        for (name, value) in &self.entries {
            argv.push(format!("--{name}"));
            argv.extend(to_words(value));
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeswift_args::cli::{Cli, parse};
    use serde_json::json;

    fn list(v: Value) -> ArgList {
        ArgList::from_spec(v.as_object().unwrap())
    }

    #[test]
    fn argv_round_trips_through_the_swift_parser() {
        let args = list(json!({
            "model": "Qwen/Qwen2.5-0.5B",
            "dataset": ["a.jsonl", "b.jsonl#500"],
            "lora-rank": 16,
            "learning_rate": 0.0001,
            "model_kwargs": {"max_pixels": 1003520},
            "streaming": true,
            "max_steps": 100,
        }));
        args.validate(Command::Sft).unwrap();
        let argv = args.to_argv(Command::Sft);
        assert_eq!(
            &argv[..4],
            ["sft", "--model", "Qwen/Qwen2.5-0.5B", "--dataset"]
        );
        assert!(argv.contains(&"--lora_rank".to_string()));
        let from_cli = match parse(std::iter::once("swift".to_string()).chain(argv)).unwrap() {
            Cli::Run { resolved, .. } => resolved.args,
            Cli::Exit { text, .. } => panic!("{text}"),
        };
        let from_map = resolve_map(Command::Sft, &args.entries, "spec.args")
            .unwrap()
            .args;
        for name in [
            "model",
            "dataset",
            "lora_rank",
            "learning_rate",
            "model_kwargs",
            "streaming",
        ] {
            assert_eq!(from_cli.get(name), from_map.get(name), "{name}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let err = list(json!({"lora_rnak": 8}))
            .validate(Command::Sft)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("spec.args.lora_rnak"), "{text}");
        assert!(text.contains("did you mean '--lora_rank'"), "{text}");
        let err = list(json!({"lora_rank": "eight"}))
            .validate(Command::Sft)
            .unwrap_err();
        assert!(err.to_string().contains("spec.args.lora_rank"), "{err}");
    }

    #[test]
    fn operator_arguments_do_not_override_the_users() {
        let mut args = list(json!({"output_dir": "/out"}));
        let err = args
            .add_from("output_dir", json!("s3://b/o"), "spec.storage.output")
            .unwrap_err();
        assert!(err.to_string().contains("spec.args.output_dir"), "{err}");
        let mut args = list(json!({"resume_from_checkpoint": "/x"}));
        let err = args
            .add_reserved("resume_from_checkpoint", json!("/out"), "restarts resume")
            .unwrap_err();
        assert!(err.to_string().contains("set by the operator"), "{err}");
    }
}
