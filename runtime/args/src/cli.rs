//! The `swift` command line: clap does the tokenising (subcommands, `--name value...`, dash
//! aliases, `--help`); every value goes through the table's own rules in `resolve`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction};

use crate::command::Command;
use crate::config_file;
use crate::error::{ArgsError, Origin};
use crate::help;
use crate::resolve::{Given, GivenValue, Resolved, normalize_name, resolve, unknown};
use crate::spec::{ArgSpec, Scalar, ValueType};

/// The outcome of reading `swift ...` from the command line.
#[derive(Debug)]
pub enum Cli {
    /// Run `command` with these arguments.
    Run {
        command: Command,
        resolved: Box<Resolved>,
    },
    /// Print this text and exit with this code (help, version, or a clap usage error).
    Exit { text: String, code: i32 },
}

fn takes_negative_numbers(ty: ValueType) -> bool {
    matches!(
        ty,
        ValueType::Int
            | ValueType::Float
            | ValueType::Number
            | ValueType::List(Scalar::Int | Scalar::Float)
    )
}

fn clap_arg(spec: &'static ArgSpec) -> Arg {
    let mut arg = Arg::new(spec.name)
        .long(spec.name)
        .action(ArgAction::Set)
        .value_name(spec.type_name());
    if spec.name.contains('_') {
        arg = arg.alias(spec.name.replace('_', "-"));
    }
    arg = match spec.ty {
        ValueType::Bool => arg.num_args(0..=1).default_missing_value("true"),
        ValueType::List(_) => arg.num_args(1..),
        _ => arg.num_args(1),
    };
    if takes_negative_numbers(spec.ty) {
        arg = arg.allow_negative_numbers(true);
    }
    arg
}

fn clap_subcommand(command: Command) -> clap::Command {
    let config = Arg::new("config")
        .long("config")
        .value_name("FILE")
        .num_args(1)
        .help("YAML or JSON file of argument names to values");
    command.args().iter().fold(
        clap::Command::new(command.name())
            .about(command.about())
            .args_override_self(true)
            .override_help(help::render(command))
            .arg(config),
        |c, spec| c.arg(clap_arg(spec)),
    )
}

/// The whole `swift` command tree.
pub fn clap_command() -> clap::Command {
    Command::ALL.iter().fold(
        clap::Command::new("swift")
            .version(env!("CARGO_PKG_VERSION"))
            .about("kubeswift: ms-swift's command line, in one Rust binary")
            .subcommand_required(true)
            .arg_required_else_help(true),
        |root, &c| root.subcommand(clap_subcommand(c)),
    )
}

/// The subcommand named in argv, for errors clap reports without it.
fn command_in(argv: &[OsString]) -> Option<Command> {
    argv.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
}

fn from_clap_error(e: clap::Error, argv: &[OsString]) -> Result<Cli, ArgsError> {
    let code = e.exit_code();
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
        && let Some(command) = command_in(argv)
    {
        let raw = arg.split('=').next().unwrap_or(arg);
        return Err(unknown(command, &normalize_name(raw), Origin::CommandLine));
    }
    Ok(Cli::Exit {
        text: e.render().to_string(),
        code,
    })
}

/// Parses argv (including the program name) and resolves the arguments.
pub fn parse<I, T>(argv: I) -> Result<Cli, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = match clap_command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => return from_clap_error(e, &argv),
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Err(ArgsError::Usage {
            message: "missing command, e.g. `swift sft --help`".into(),
        });
    };
    let command: Command = name
        .parse()
        .map_err(|message| ArgsError::Usage { message })?;
    let mut given: Vec<Given> = Vec::new();
    if let Some(path) = sub.get_one::<String>("config") {
        given.extend(config_file::read(&PathBuf::from(path))?);
    }
    for spec in command.args().iter() {
        if sub.value_source(spec.name) == Some(ValueSource::CommandLine) {
            let words = sub
                .get_many::<String>(spec.name)
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            given.push(Given {
                name: spec.name.to_string(),
                value: GivenValue::Words(words),
                origin: Origin::CommandLine,
            });
        }
    }
    let resolved = resolve(command, given)?;
    Ok(Cli::Run {
        command,
        resolved: Box::new(resolved),
    })
}
