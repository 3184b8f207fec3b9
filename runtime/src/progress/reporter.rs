//! What the trainer holds: publishes reports to `/progress` while it runs and leaves the
//! last one as the termination message when the run ends, successfully or not.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;

use super::{ProgressReport, ProgressServer, ProgressSettings, write_termination_message};

/// Progress reporting for one process; does nothing unless the operator asked for it.
pub struct ProgressReporter {
    server: Option<ProgressServer>,
    termination_log: Option<PathBuf>,
    latest: Mutex<Option<ProgressReport>>,
}

impl ProgressReporter {
    /// Reports nowhere (a laptop run, ranks other than 0).
    pub fn disabled() -> Self {
        ProgressReporter {
            server: None,
            termination_log: None,
            latest: Mutex::new(None),
        }
    }

    /// Starts `/progress` on all interfaces at the configured port (the operator dials the
    /// pod through the job's headless Service).
    pub fn start(settings: ProgressSettings) -> std::io::Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, settings.port));
        Ok(ProgressReporter {
            server: Some(ProgressServer::start(addr, settings.token)?),
            termination_log: Some(settings.termination_log),
            latest: Mutex::new(None),
        })
    }

    /// From the environment for this process: the global rank is `RANK`, else `NODE_RANK`
    /// (one process per node), else 0.
    pub fn from_env() -> anyhow::Result<Self> {
        let get = |k: &str| std::env::var(k).ok();
        let rank = get("RANK")
            .or_else(|| get("NODE_RANK"))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0usize);
        match super::settings_from_env(rank, get).map_err(anyhow::Error::msg)? {
            Some(settings) => Ok(Self::start(settings)?),
            None => Ok(Self::disabled()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.server.is_some()
    }

    /// Makes `report` the one `/progress` answers with and the termination message uses.
    pub fn publish(&self, report: ProgressReport) {
        if let Some(server) = &self.server {
            server.publish(report.clone());
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Records a newly committed checkpoint in the current report.
    pub fn set_checkpoint(&self, checkpoint: String) {
        let report = {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let report = latest.get_or_insert_with(|| ProgressReport::at_step(0));
            report.checkpoint = Some(checkpoint);
            report.clone()
        };
        if let Some(server) = &self.server {
            server.publish(report);
        }
    }

    /// Writes the last report, marked finished, as the termination message. A failure to
    /// write is logged, never turned into an error: the run's own outcome matters more.
    pub fn finish(&self) {
        self.finish_with(None);
    }

    /// [`finish`](Self::finish), with the error a failed run ends with in the report.
    pub fn finish_with(&self, error: Option<&anyhow::Error>) {
        let Some(path) = &self.termination_log else {
            return;
        };
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| ProgressReport::at_step(0));
        latest.error = error.map(|e| format!("{e:#}"));
        if let Err(e) = write_termination_message(path, &latest) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the termination message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_reporter_serves_and_leaves_the_last_report_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("termination-log");
        let reporter = ProgressReporter::start(ProgressSettings {
            port: 0,
            token: "t".into(),
            termination_log: log.clone(),
        })
        .unwrap();
        assert!(reporter.is_enabled());
        let mut r = ProgressReport::at_step(4);
        r.loss = Some(2.0);
        reporter.publish(r);
        reporter.set_checkpoint("out/v0/checkpoint-4".into());
        reporter.finish();
        let back: ProgressReport =
            serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
        assert_eq!(back.step, 4);
        assert_eq!(back.loss, Some(2.0));
        assert!(back.finished);
        assert_eq!(back.checkpoint.as_deref(), Some("out/v0/checkpoint-4"));
    }

    #[test]
    fn a_disabled_reporter_writes_nothing() {
        let reporter = ProgressReporter::disabled();
        reporter.publish(ProgressReport::at_step(1));
        reporter.finish();
        assert!(!reporter.is_enabled());
    }
}
