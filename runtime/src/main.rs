//! `swift`: ms-swift's command line. Parses and validates the arguments with the shared
//! table, then hands them to the engine of the subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;

use kubeswift_args::Command;
use kubeswift_args::cli::{self, Cli};

use kubeswift_runtime::commands;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` and log collectors would show the escape
    // codes as text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Training and generation allocate and free MB-sized tensors every op; glibc's defaults
/// hand them back to the kernel each time, so every op pays page faults on fresh memory
/// (measured: a decoder layer's LoRA step 228 ms -> 137 ms on 2 cores with this on;
/// `cargo bench -p kubeswift-kernels --bench layer`). Process-wide, so it lives here.
///
/// Not for `swift export`: it passes over the weights once, and memory kept rather than
/// returned there only adds up (see `return_freed_memory`).
fn tune_allocator(command: Command) {
    use kubeswift_kernels::cpu::alloc;
    let applied = if command == Command::Export {
        alloc::return_freed_memory()
    } else {
        alloc::keep_freed_memory()
    };
    if !applied {
        tracing::debug!("allocator left at its defaults (not glibc)");
    }
}

fn main() -> ExitCode {
    init_logging();
    match cli::parse(std::env::args_os()) {
        Ok(Cli::Exit { text, code }) => {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            ExitCode::from(code as u8)
        }
        Ok(Cli::Run { command, resolved }) => {
            tune_allocator(command);
            commands::run(command, *resolved)
        }
        Err(e) => {
            commands::eprint_line(&format!("error: {e}"));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
