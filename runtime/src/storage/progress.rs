//! Transfer progress: an indicatif bar on a terminal, a `tracing` line every ~10% (and at
//! the end) otherwise, so pod logs stay readable.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one transfer of a known number of bytes.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    bar: Option<ProgressBar>,
    next_log_percent: Mutex<u64>,
}

impl Progress {
    /// A bar on a terminal, log lines otherwise.
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = ProgressBar::new(total).with_style(style);
            bar.set_message(label.clone());
            bar
        });
        Progress::with_bar(label, total, bar)
    }

    /// Log lines only (tests, background sync).
    pub fn quiet(label: impl Into<String>, total: u64) -> Progress {
        Progress::with_bar(label.into(), total, None)
    }

    fn with_bar(label: String, total: u64, bar: Option<ProgressBar>) -> Progress {
        Progress {
            label,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            bar,
            next_log_percent: Mutex::new(10),
        }
    }

    /// Counts bytes already present (resumed downloads) without logging.
    pub fn skip(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Counts transferred bytes.
    pub fn inc(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            return;
        }
        let percent = done.saturating_mul(100) / self.total.max(1);
        let Ok(mut next) = self.next_log_percent.lock() else {
            return;
        };
        if percent >= *next && percent < 100 {
            *next = (percent / 10 + 1) * 10;
            tracing::info!(
                "{}: {}% ({} of {} bytes, {:.1} MB/s)",
                self.label,
                percent,
                done,
                self.total,
                mb_per_s(done, self.started)
            );
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Ends the bar and logs a summary line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        tracing::info!(
            "{}: done, {} bytes in {:.1}s ({:.1} MB/s)",
            self.label,
            self.done(),
            self.started.elapsed().as_secs_f64(),
            mb_per_s(self.done(), self.started)
        );
    }
}

fn mb_per_s(bytes: u64, since: Instant) -> f64 {
    bytes as f64 / 1e6 / since.elapsed().as_secs_f64().max(1e-9)
}
