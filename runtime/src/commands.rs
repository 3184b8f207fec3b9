//! Dispatch from a parsed subcommand to its engine.

use std::process::ExitCode;

use kubeswift_args::{Command, Resolved};

use kubeswift_args::exit;

/// An ms-swift feature this build refuses by name: the run exits with [`exit::NOT_BUILT`], so
/// a script (or a Job's podFailurePolicy) can tell "not built" from "failed".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotBuilt(pub String);

/// An error and its causes on one line, `outer: cause: root`, as anyhow's `{:#}` prints
/// them, but without a cause whose text its parent already spelled out: many of our
/// errors put their source in their own message (`--system x.txt: cannot read the file:
/// No such file or directory`) and also expose it as `source()`, which `{:#}` then
/// printed a second time.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(part.trim()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Writes `line` and a newline to stderr in one `write`. `eprintln!` writes each piece of
/// its format separately, so the lines of a launcher and of the workers sharing its stderr
/// came out interleaved mid-line (`error: worker rank 1error:  exited with code ...`); one
/// write of a line shorter than the pipe buffer (4 KiB) is never split.
pub fn eprint_line(line: &str) {
    use std::io::Write;
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    // Nothing better to do when stderr itself is gone.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Runs one subcommand with its resolved arguments.
pub fn run(command: Command, resolved: Resolved) -> ExitCode {
    if let Some(path) = &resolved.loaded_from {
        tracing::info!(path = %path.display(), "load_args: filled unset arguments from args.json");
    }
    // NPROC_PER_NODE > 1 or NNODES > 1: this process becomes torchrun (dist/launcher.rs);
    // `swift infer` then splits its dataset across the workers.
    if matches!(command, Command::Sft | Command::Pt | Command::Infer) {
        match crate::dist::launcher::maybe_launch() {
            Ok(Some(code)) => return ExitCode::from(code),
            Ok(None) => {}
            Err(e) => {
                eprint_line(&format!("error: {}", error_text(&e)));
                return ExitCode::FAILURE;
            }
        }
    }
    let engine: Option<fn(&kubeswift_args::Args) -> anyhow::Result<()>> = match command {
        Command::Infer => Some(crate::infer::command::run),
        Command::Deploy => Some(crate::serve::command::run),
        Command::Export => Some(crate::export::command::run),
        Command::Sft | Command::Pt => Some(|args| crate::train::command::run(args).map(|_| ())),
        _ => None,
    };
    if let Some(run) = engine {
        return match run(&resolved.args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if let Some(stopped) = e.downcast_ref::<crate::train::interrupt::Interrupted>() {
                    // Not an error: the run did what the signal asked.
                    eprint_line(&stopped.to_string());
                    return ExitCode::from(stopped.exit_code());
                }
                eprint_line(&format!("error: {}", error_text(&e)));
                ExitCode::from(failure_code(&e))
            }
        };
    }
    // No engine is built yet: say so in one line instead of pretending to run.
    eprint_line(&format!(
        "error: `swift {command}`: the {} engine is not built yet in this version of kubeswift",
        engine_name(command)
    ));
    ExitCode::from(exit::NOT_BUILT)
}

/// The exit code of a run that failed with `e`: NOT_BUILT for a refused feature,
/// PEER_FAILED for a worker that stopped because another rank failed (so the launcher and
/// the operator name that rank, not this one), FAILURE otherwise.
fn failure_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<NotBuilt>()) {
        exit::NOT_BUILT
    } else if e
        .chain()
        .filter_map(|c| c.downcast_ref::<crate::dist::DistError>())
        .any(crate::dist::DistError::is_peer_failure)
    {
        exit::PEER_FAILED
    } else {
        exit::FAILURE
    }
}

fn engine_name(command: Command) -> &'static str {
    match command {
        Command::Sft | Command::Pt => "training",
        Command::Rlhf => "RLHF",
        Command::Infer => "inference",
        Command::Deploy => "serving",
        Command::Export => "export",
        Command::Sample => "sampling",
        Command::Eval => "evaluation",
        Command::App => "app",
        Command::WebUi => "web-ui",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("--system {path}: cannot read the file: {source}")]
    struct Echoing {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_its_parents_text_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(Echoing {
            path: "x.txt".into(),
            source: io,
        });
        assert_eq!(
            error_text(&e),
            "--system x.txt: cannot read the file: No such file or directory"
        );
        // anyhow's own rendering repeats it; this is what the helper is for.
        assert_eq!(format!("{e:#}").matches("No such file").count(), 2);
    }

    #[test]
    fn context_and_distinct_causes_are_all_kept_in_order() {
        let e = anyhow::anyhow!("root cause")
            .context("middle")
            .context("outer");
        assert_eq!(error_text(&e), "outer: middle: root cause");
    }
}
