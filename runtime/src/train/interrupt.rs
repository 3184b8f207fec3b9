//! SIGTERM and SIGINT during training: the step under way finishes, a checkpoint is saved,
//! and the process exits with 128 + the signal, as if the signal had ended it. Kubernetes
//! sends SIGTERM before it evicts or preempts a pod, and a laptop user presses Ctrl-C: in
//! both cases the work since the last `--save_steps` checkpoint used to be lost. A second
//! signal ends the process at once (the default action), for a step that takes too long.
//!
//! The handler only records the signal (an atomic store is async-signal-safe); the trainer
//! reads it between steps, and data-parallel ranks agree on it in the step's all-reduce, so
//! every rank stops after the same step.
//!
//! A distributed worker does not end on a second signal: it gets the same signal twice as a
//! matter of course (Ctrl-C reaches the whole process group, launcher included, and the
//! launcher forwards it), and its launcher (ours or torchrun) sends SIGKILL after a grace
//! period anyway.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The first signal received, 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Whether a second signal ends the process at once.
static SECOND_ENDS: AtomicBool = AtomicBool::new(true);

extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 && SECOND_ENDS.load(Ordering::SeqCst) {
        // SAFETY: signal(2) and raise(3) are async-signal-safe; the default action of
        // SIGTERM/SIGINT ends the process.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

/// Routes SIGTERM and SIGINT to [`requested`] for the rest of the process; `worker`: a
/// distributed worker, which a second signal does not end (see the module's notes).
pub fn install(worker: bool) -> std::io::Result<()> {
    SECOND_ENDS.store(!worker, Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only touches an atomic (and, on a
        // second signal, async-signal-safe calls); no flags, an empty mask.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal that asked this process to stop, if one did.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Training stopped early on a signal, after saving what it had.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by {} after step {step}: {}",
    signal_name(*.signal),
    match .checkpoint {
        Some(dir) => format!("saved {dir}; --resume_from_checkpoint continues from it"),
        None => "nothing saved (--save_strategy no)".to_string(),
    }
)]
pub struct Interrupted {
    pub signal: i32,
    pub step: u64,
    pub checkpoint: Option<String>,
}

impl Interrupted {
    /// The exit code a shell reports for a process ended by the signal.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_what_was_saved_and_the_code_is_the_signals() {
        let stopped = Interrupted {
            signal: libc::SIGTERM,
            step: 12,
            checkpoint: Some("out/v0/checkpoint-12".into()),
        };
        assert_eq!(
            stopped.to_string(),
            "stopped by SIGTERM after step 12: saved out/v0/checkpoint-12; \
             --resume_from_checkpoint continues from it"
        );
        assert_eq!(stopped.exit_code(), 143);
        let nothing = Interrupted {
            signal: libc::SIGINT,
            step: 3,
            checkpoint: None,
        };
        assert_eq!(nothing.exit_code(), 130);
        assert!(
            nothing
                .to_string()
                .ends_with("nothing saved (--save_strategy no)")
        );
    }
}
