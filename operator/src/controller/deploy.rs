//! SwiftDeployment reconcile: apply the Deployment and Service, mirror replicas, readiness
//! and the URL into status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kubeswift_crds::common::{condition as ct, reason};
use kubeswift_crds::{SwiftDeployment, SwiftDeploymentStatus};
use serde_json::json;

use crate::build::deploy::{children, url};
use crate::build::labels::{self, DEPLOYMENT};
use crate::controller::conditions::{self, Set};
use crate::controller::{Context, Error, apply, ns_name};

/// One reconcile of a deployment.
pub async fn reconcile(d: Arc<SwiftDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&d, &ctx).await;
    ctx.metrics.reconciled("deploy", started.elapsed());
    result
}

async fn reconcile_inner(d: &SwiftDeployment, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = ns_name(d)?;
    let now = ctx.now();
    let generation = d.metadata.generation;
    let api: Api<SwiftDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let old = d.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let desired = match children(d, &ctx.defaults) {
        Ok(c) => c,
        Err(e) => {
            conditions::set(
                &mut status.conditions,
                Set {
                    type_: ct::AVAILABLE,
                    status: false,
                    reason: e.reason(),
                    message: e.to_string(),
                },
                generation,
                now,
            );
            if old != status {
                ctx.event(d, EventType::Warning, e.reason(), e.to_string())
                    .await;
            }
            write_status(&api, &name, &old, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let existed = deployments.get_opt(&name).await?.is_some();
    let applied = apply::apply(&deployments, &desired.deployment).await?;
    apply::apply(&services, &desired.service).await?;
    if !existed {
        ctx.event(
            d,
            EventType::Normal,
            "Created",
            format!("created Deployment and Service {name}"),
        )
        .await;
    }
    let observed = applied.status.unwrap_or_default();
    status.replicas = observed.replicas.unwrap_or(0);
    status.ready_replicas = observed.ready_replicas.unwrap_or(0);
    status.selector = Some(labels::to_selector_string(&labels::selector(
        DEPLOYMENT, &name,
    )));
    status.url = Some(url(&name, &ns));
    let available = status.ready_replicas >= d.spec.replicas.min(1) && d.spec.replicas > 0;
    let (why, message) = if available {
        (
            reason::MINIMUM_REPLICAS_AVAILABLE,
            format!(
                "{}/{} replicas ready",
                status.ready_replicas, d.spec.replicas
            ),
        )
    } else {
        (
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            format!(
                "{}/{} replicas ready (the model may still be loading)",
                status.ready_replicas, d.spec.replicas
            ),
        )
    };
    conditions::set(
        &mut status.conditions,
        Set {
            type_: ct::AVAILABLE,
            status: available,
            reason: why,
            message,
        },
        generation,
        now,
    );
    status.observed_generation = generation;
    write_status(&api, &name, &old, &status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn write_status(
    api: &Api<SwiftDeployment>,
    name: &str,
    old: &SwiftDeploymentStatus,
    new: &SwiftDeploymentStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": new })),
    )
    .await?;
    Ok(())
}
