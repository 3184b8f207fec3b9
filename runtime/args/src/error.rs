//! Errors of argument parsing and validation. Every variant names what the user must fix:
//! the argument, the value, and where it came from (command line, config file and line,
//! args.json, or a field of a Kubernetes resource).

use std::fmt;
use std::path::PathBuf;

use crate::command::Command;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    CommandLine,
    ConfigFile {
        path: PathBuf,
        line: Option<usize>,
    },
    ArgsJson {
        path: PathBuf,
    },
    /// A field of a custom resource, e.g. `spec.args`.
    Resource {
        field: String,
    },
    /// Set by kubeswift itself (a derived default or a forced value).
    Internal,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("on the command line"),
            Origin::ConfigFile {
                path,
                line: Some(l),
            } => write!(f, "in {} line {l}", path.display()),
            Origin::ConfigFile { path, line: None } => write!(f, "in {}", path.display()),
            Origin::ArgsJson { path } => write!(f, "in {}", path.display()),
            Origin::Resource { field } => write!(f, "in {field}"),
            Origin::Internal => f.write_str("(set by kubeswift)"),
        }
    }
}

/// An argument error. All of them are usage errors (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "unknown argument '--{name}' for `swift {command}` {origin}{}",
        hint(suggestion, owners)
    )]
    UnknownArgument {
        name: String,
        command: Command,
        origin: Origin,
        /// The closest argument name of this command.
        suggestion: Option<String>,
        /// Other commands that do take an argument of this name.
        owners: Vec<Command>,
    },

    #[error("invalid value '{value}' for '--{name}' {origin}: expected {expected}")]
    BadValue {
        name: String,
        value: String,
        expected: String,
        origin: Origin,
    },

    #[error(
        "'--{name} {value}' {origin} is not supported yet{}",
        supported_list(supported)
    )]
    NotSupported {
        name: String,
        value: String,
        origin: Origin,
        /// The values this build does implement, if any.
        supported: Vec<String>,
    },

    #[error("{message}")]
    Conflict { message: String },

    #[error("cannot read {}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error("{message}")]
    Usage { message: String },
}

fn hint(suggestion: &Option<String>, owners: &[Command]) -> String {
    let mut out = String::new();
    if let Some(s) = suggestion {
        out.push_str(&format!("; did you mean '--{s}'?"));
    }
    if !owners.is_empty() {
        let names: Vec<_> = owners.iter().map(|c| format!("swift {c}")).collect();
        out.push_str(&format!(" (it is an argument of: {})", names.join(", ")));
    }
    out
}

fn supported_list(supported: &[String]) -> String {
    if supported.is_empty() {
        String::new()
    } else {
        format!(" (supported: {})", supported.join(", "))
    }
}

impl ArgsError {
    /// The process exit code for this error: 2, like argparse's usage errors.
    pub fn exit_code(&self) -> i32 {
        i32::from(crate::exit::USAGE)
    }
}
