//! The operator's side of the progress contract (PROGRESS.md): poll rank 0's `/progress`
//! while a job runs, read the final report from node 0's termination message when it ends,
//! and turn a report into the `status.progress` block.

use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kubeswift_crds::progress::{PROGRESS_PORT, ProgressReport};
use kubeswift_crds::train::TrainProgress;
use sha2::{Digest, Sha256};

/// Which job's rank 0 to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub job: String,
    pub token: String,
}

/// Where live progress comes from (HTTP in production, a fake in tests).
pub trait ProgressSource: Send + Sync {
    /// The current report; `Ok(None)` when rank 0 has none yet.
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<ProgressReport>, String>>;
}

/// The bearer token of a job's `/progress`: SHA-256 of the operator's key and the job's uid,
/// so the operator never needs to read it back from the Secret it writes.
pub fn token(key: &[u8], uid: &str) -> String {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(uid.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `GET <url>` with `Authorization: Bearer <token>`.
pub struct HttpProgress {
    /// `{namespace}` and `{job}` are replaced; the default reaches rank 0 through the
    /// job's headless Service.
    pub url_template: String,
    pub timeout: Duration,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

/// The default `/progress` URL: node 0's stable name.
pub fn default_url_template() -> String {
    format!("http://{{job}}-node-0.{{job}}.{{namespace}}.svc:{PROGRESS_PORT}/progress")
}

impl HttpProgress {
    pub fn new(url_template: String) -> Self {
        HttpProgress {
            url_template,
            timeout: Duration::from_secs(3),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn get(&self, target: &Target) -> Result<Option<ProgressReport>, String> {
        let url = self
            .url_template
            .replace("{namespace}", &target.namespace)
            .replace("{job}", &target.job);
        let req = hyper::Request::get(&url)
            .header("authorization", format!("Bearer {}", target.token))
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| format!("{url}: body timed out"))?
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        if status == hyper::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}"));
        }
        let text = String::from_utf8_lossy(&body);
        Ok(ProgressReport::parse(&text))
    }
}

impl ProgressSource for HttpProgress {
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<ProgressReport>, String>> {
        Box::pin(self.get(target))
    }
}

/// The final report node 0's `swift` container left as its termination message.
pub fn from_termination_message(pod: &Pod) -> Option<ProgressReport> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .filter(|s| s.name == crate::build::pod::CONTAINER)
        .find_map(|s| {
            let message = s.state.as_ref()?.terminated.as_ref()?.message.as_ref()?;
            ProgressReport::parse(message)
        })
}

/// The `status.progress` block for a report.
pub fn to_status(report: &ProgressReport, now: Timestamp) -> TrainProgress {
    let summary = match report.total_steps {
        Some(total) if total > 0 => {
            let pct = (report.step as f64 * 100.0 / total as f64).min(100.0);
            format!("{}/{} ({pct:.0}%)", report.step, total)
        }
        _ => format!("{}", report.step),
    };
    TrainProgress {
        step: report.step,
        total_steps: report.total_steps,
        epoch: report.epoch,
        loss: report.loss,
        eta_seconds: report.eta_seconds,
        checkpoint: report.checkpoint.clone(),
        summary,
        update_time: Some(Time(now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_depend_on_key_and_uid() {
        let a = token(b"k", "uid-1");
        assert_eq!(a, token(b"k", "uid-1"));
        assert_ne!(a, token(b"k", "uid-2"));
        assert_ne!(a, token(b"k2", "uid-1"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn summaries() {
        let now = Timestamp::from_second(0).unwrap();
        let r = ProgressReport {
            version: 1,
            step: 120,
            total_steps: Some(1000),
            ..Default::default()
        };
        assert_eq!(to_status(&r, now).summary, "120/1000 (12%)");
        let r = ProgressReport {
            version: 1,
            step: 7,
            ..Default::default()
        };
        assert_eq!(to_status(&r, now).summary, "7");
    }

    #[test]
    fn final_report_from_the_termination_message() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "j-node-0-abc"},
            "status": {"containerStatuses": [{
                "name": "swift", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0,
                    "message": "{\"version\":1,\"step\":50,\"total_steps\":50,\"finished\":true}"}}
            }]}
        }))
        .unwrap();
        let r = from_termination_message(&pod).unwrap();
        assert_eq!((r.step, r.finished), (50, true));
    }

    #[tokio::test]
    async fn polls_with_the_bearer_token() {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/{ns}/{job}/progress",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer secret")
                {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (
                    StatusCode::OK,
                    r#"{"version":1,"step":3,"total_steps":10,"loss":2.5}"#.to_string(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let source = HttpProgress::new(format!("http://{addr}/{{namespace}}/{{job}}/progress"));
        let mut target = Target {
            namespace: "ml".into(),
            job: "j".into(),
            token: "secret".into(),
        };
        let r = source.fetch(&target).await.unwrap().unwrap();
        assert_eq!((r.step, r.loss), (3, Some(2.5)));
        target.token = "wrong".into();
        let err = source.fetch(&target).await.unwrap_err();
        assert!(err.contains("401"), "{err}");
    }
}
