//! SwiftDeployment -> Deployment + Service (port 8000) running `swift deploy`, with a startup
//! probe that leaves room for model loading, readiness on `/health`, and rolling updates.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ContainerPort, HTTPGetAction, Probe, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kubeswift_args::Command;
use kubeswift_crds::deploy::Probes;
use kubeswift_crds::{SwiftDeployment, names};
use serde_json::Value;

use crate::build::argv::ArgList;
use crate::build::labels::{self, DEPLOYMENT, SPEC_HASH};
use crate::build::storage::{self, Mounts};
use crate::build::{BuildError, Defaults, hash, pod};

/// The port `swift deploy` listens on and the Service exposes.
pub const PORT: u16 = 8000;

/// The desired children of a deployment.
#[derive(Debug, Clone)]
pub struct DeployChildren {
    pub deployment: Deployment,
    pub service: Service,
}

/// The in-cluster OpenAI base URL of a deployment.
pub fn url(name: &str, namespace: &str) -> String {
    format!("http://{name}.{namespace}.svc:{PORT}/v1")
}

/// The `swift deploy` arguments: the user's, the model from storage, the adapters, and the
/// address the Service reaches.
pub fn arguments(d: &SwiftDeployment) -> Result<(ArgList, Mounts), BuildError> {
    let mut args = ArgList::from_spec(&d.spec.args);
    let mut mounts = Mounts::default();
    storage::apply(d.spec.storage.as_ref(), &mut args, &mut mounts, None)?;
    if !d.spec.adapters.is_empty() {
        let adapters = d
            .spec
            .adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let path = mounts.resolve(&a.uri, &format!("spec.adapters[{i}].uri"))?;
                Ok(format!("{}={path}", a.name))
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        args.add_from("adapters", Value::from(adapters), "spec.adapters")?;
    }
    args.add_reserved(
        "host",
        Value::from("0.0.0.0"),
        "the Service must reach the server",
    )?;
    args.add_reserved("port", Value::from(PORT), "the Service targets this port")?;
    args.validate(Command::Deploy)?;
    Ok((args, mounts))
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// Startup: room for `startupTimeoutSeconds` of model loading; then readiness and liveness
/// on `/health`.
pub fn probes(template: &mut k8s_openapi::api::core::v1::PodTemplateSpec, p: &Probes) {
    let period = p.period_seconds.max(1);
    let startup_failures = (p.startup_timeout_seconds + period - 1) / period;
    if let Some(c) = pod::container(template) {
        c.ports = Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: PORT.into(),
            ..Default::default()
        }]);
        c.startup_probe = Some(http_probe("/health", period, startup_failures.max(1)));
        c.readiness_probe = Some(http_probe("/health", period, 3));
        c.liveness_probe = Some(http_probe("/health", period, 6));
    }
}

/// Every child of a deployment.
pub fn children(d: &SwiftDeployment, defaults: &Defaults) -> Result<DeployChildren, BuildError> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    if !names::is_dns1035_label(name) {
        return Err(BuildError::invalid(
            "metadata.name",
            format!(
                "'{name}' must be a DNS-1035 label of at most 63 characters (it names the Service)"
            ),
        ));
    }
    let (args, mounts) = arguments(d)?;
    let labels = labels::common(DEPLOYMENT, name, "deploy");
    let image = d.spec.image.as_deref().unwrap_or(&defaults.image);
    let mut template = pod::swift_pod(
        image,
        args.to_argv(Command::Deploy),
        d.spec.resources.as_ref(),
        labels.clone(),
    );
    probes(&mut template, &d.spec.probes.clone().unwrap_or_default());
    pod::add_mounts(&mut template, &mounts);
    pod::add_env(&mut template, d.spec.env.clone());
    pod::apply_patch(&mut template, d.spec.pod_template.as_ref());

    let meta = |labels: BTreeMap<String, String>| ObjectMeta {
        name: Some(names::deploy_children(name)),
        namespace: d.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: d.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    };
    let rolling = d.spec.rolling_update.clone().unwrap_or_default();
    let spec = DeploymentSpec {
        replicas: Some(d.spec.replicas),
        selector: LabelSelector {
            match_labels: Some(labels::selector(DEPLOYMENT, name)),
            match_expressions: None,
        },
        strategy: Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: rolling.max_surge,
                max_unavailable: rolling.max_unavailable,
            }),
        }),
        template,
        ..Default::default()
    };
    let mut deploy_meta = meta(labels.clone());
    deploy_meta.annotations = Some(BTreeMap::from([(SPEC_HASH.to_string(), hash::of(&spec))]));
    Ok(DeployChildren {
        deployment: Deployment {
            metadata: deploy_meta,
            spec: Some(spec),
            status: None,
        },
        service: Service {
            metadata: meta(labels),
            spec: Some(ServiceSpec {
                selector: Some(labels::selector(DEPLOYMENT, name)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: PORT.into(),
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        },
    })
}
