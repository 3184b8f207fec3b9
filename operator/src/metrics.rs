//! Prometheus metrics: reconciles, errors by kind, reconcile duration, and jobs by phase.
//! Served on `/metrics` beside `/healthz` by the operator's HTTP listener.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kubeswift_crds::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    kind: String,
    phase: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
    jobs: Family<PhaseLabels, Gauge>,
    phases: Mutex<HashMap<(String, String), Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubeswift");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let jobs = Family::<PhaseLabels, Gauge>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register("jobs", "Jobs by kind and phase", jobs.clone());
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            jobs,
            phases: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Counts one reconcile of `controller` that took `took`.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        let label = ControllerLabel {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Counts one failed reconcile.
    pub fn error(&self, controller: &str, error: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                error: error.into(),
            })
            .inc();
    }

    /// Records the phase of one job and recomputes the per-phase gauge of its kind.
    pub fn set_phase(&self, kind: &str, name: &str, namespace: Option<&str>, phase: Phase) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        phases.insert(
            (
                kind.to_string(),
                format!("{}/{name}", namespace.unwrap_or("")),
            ),
            phase,
        );
        for p in Phase::ALL {
            let count = phases
                .iter()
                .filter(|((k, _), v)| k == kind && *v == p)
                .count();
            self.jobs
                .get_or_create(&PhaseLabels {
                    kind: kind.into(),
                    phase: p.as_str().into(),
                })
                .set(count as i64);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_phases() {
        let m = Metrics::default();
        m.reconciled("train", Duration::from_millis(3));
        m.error("train", "kube");
        m.set_phase("train", "a", Some("ns"), Phase::Running);
        m.set_phase("train", "b", Some("ns"), Phase::Running);
        m.set_phase("train", "a", Some("ns"), Phase::Succeeded);
        let text = m.encode();
        assert!(
            text.contains("kubeswift_reconciles_total{controller=\"train\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kubeswift_reconcile_errors_total{controller=\"train\",error=\"kube\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kubeswift_jobs{kind=\"train\",phase=\"Running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeswift_jobs{kind=\"train\",phase=\"Succeeded\"} 1"),
            "{text}"
        );
    }
}
