//! The reconcilers: one kube-runtime `Controller` per resource kind. Each reconcile reads
//! the resource and its children, asks the pure builders for the desired children, applies
//! the difference with server-side apply, and writes status. Errors become requeues with a
//! metric; invalid specs become a Failed condition and no retries.

pub mod apply;
pub mod conditions;
pub mod deploy;
pub mod sample;
pub mod train;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kubeswift_crds::{SwiftDeployment, SwiftSampleJob, SwiftTrainJob};
use tracing::{info, warn};

use crate::build::Defaults;
use crate::metrics::Metrics;
use crate::progress::ProgressSource;

/// A reconcile failure: an API error (retried with backoff) or a bug.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("resource has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// The metric label of this error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::MissingField(_) => "missing_field",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub progress: Arc<dyn ProgressSource>,
    /// Key the per-job progress tokens are derived from.
    pub progress_key: Vec<u8>,
    /// How often a running job's progress is polled.
    pub progress_interval: Duration,
}

impl Context {
    /// Publishes an event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }

    /// Now, for status timestamps.
    pub fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The namespace and name of a namespaced resource.
pub fn ns_name<K: Resource>(obj: &K) -> Result<(String, String), Error> {
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    Ok((ns, name))
}

/// Requeue after an error with a short delay, counting it.
fn error_policy<K: Resource>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
    controller: &str,
) -> Action {
    warn!(controller, name = obj.meta().name.as_deref().unwrap_or(""), error = %error, "reconcile failed");
    ctx.metrics.error(controller, error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// Which namespaces to watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Builds the shared context.
pub fn context(
    client: Client,
    defaults: Defaults,
    metrics: Arc<Metrics>,
    progress: Arc<dyn ProgressSource>,
    progress_key: Vec<u8>,
    progress_interval: Duration,
) -> Arc<Context> {
    let reporter = Reporter {
        controller: "kubeswift-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        defaults,
        metrics,
        progress,
        progress_key,
        progress_interval,
    })
}

/// Runs the three controllers for one namespace (or all) until `shutdown` resolves; then
/// they finish the reconciles in flight and return.
pub async fn run_scope(
    ctx: Arc<Context>,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let ns = ns.as_deref();
    let wc = watcher::Config::default();
    let children =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=kubeswift-operator");
    let trains = Controller::new(api::<SwiftTrainJob>(&client, ns), wc.clone())
        .owns(api::<Job>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            train::reconcile,
            |o, e, c| error_policy(o, e, c, "train"),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "train controller");
            }
        });
    let deploys = Controller::new(api::<SwiftDeployment>(&client, ns), wc.clone())
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            deploy::reconcile,
            |o, e, c| error_policy(o, e, c, "deploy"),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "deploy controller");
            }
        });
    let samples = Controller::new(api::<SwiftSampleJob>(&client, ns), wc)
        .owns(api::<Job>(&client, ns), children)
        .graceful_shutdown_on(shutdown)
        .run(
            sample::reconcile,
            |o, e, c| error_policy(o, e, c, "sample"),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "sample controller");
            }
        });
    info!(namespace = ns.unwrap_or("(all)"), "controllers started");
    futures::join!(trains, deploys, samples);
}

/// Runs the controllers for `scope`.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    match scope {
        Scope::All => run_scope(ctx, None, shutdown).await,
        Scope::Namespaces(namespaces) => {
            let runs = namespaces
                .into_iter()
                .map(|ns| run_scope(ctx.clone(), Some(ns), shutdown.clone()));
            futures::future::join_all(runs).await;
        }
    }
}

/// Deletes a finished resource whose TTL has passed, else says when to look again.
pub async fn ttl_cleanup<K>(
    api: &Api<K>,
    obj: &K,
    ttl: Option<i32>,
    completion: Option<Timestamp>,
    now: Timestamp,
) -> Result<Action, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (Some(ttl), Some(done)) = (ttl, completion) else {
        return Ok(Action::await_change());
    };
    let elapsed = now.as_second() - done.as_second();
    let left = i64::from(ttl) - elapsed;
    if left <= 0 {
        info!(name = obj.name_any(), "TTL after finished passed: deleting");
        apply::delete(api, &obj.name_any(), false).await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_secs(left as u64)))
}
