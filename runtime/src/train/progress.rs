//! Training progress for people: a bar with loss, learning rate, tokens/s and ETA on a
//! terminal; plain structured log lines otherwise (pods, CI), so logs stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// What the trainer reports after each optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub tokens_per_second: f64,
}

/// A progress display over `total` optimizer steps.
pub enum ProgressDisplay {
    Bar(ProgressBar),
    /// Not a terminal: log a line every `every` steps.
    Lines {
        total: u64,
        every: u64,
    },
    /// A data-parallel rank other than 0: rank 0 alone shows progress, as torchrun jobs do.
    Silent,
}

impl ProgressDisplay {
    /// A bar when stderr is a terminal and `disable_tqdm` is not set, else log lines.
    pub fn new(total: u64, disable_bar: bool, log_every: u64) -> Self {
        if disable_bar || !std::io::stderr().is_terminal() {
            return ProgressDisplay::Lines {
                total,
                every: log_every.max(1),
            };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "Train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        ProgressDisplay::Bar(bar)
    }

    /// Shows one step.
    pub fn step(&self, r: &StepReport) {
        match self {
            ProgressDisplay::Bar(bar) => {
                bar.set_position(r.step);
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    r.loss, r.learning_rate, r.tokens_per_second
                ));
            }
            ProgressDisplay::Lines { total, every } => {
                if r.step.is_multiple_of(*every) || r.step == *total {
                    tracing::info!(
                        step = r.step,
                        total = *total,
                        loss = r.loss,
                        learning_rate = r.learning_rate,
                        tokens_per_second = r.tokens_per_second,
                        "train"
                    );
                }
            }
            ProgressDisplay::Silent => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish();
        }
    }
}
