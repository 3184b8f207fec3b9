//! kubeswift-crds: the `kubeswift.io/v1alpha1` custom resources as Rust types.
//!
//! `SwiftTrainJob` (training), `SwiftDeployment` (serving) and `SwiftSampleJob` (sampling),
//! derived with kube + schemars. [`crds`] returns the finished CustomResourceDefinitions: the
//! derived schema plus each resource's `args` schema from `kubeswift-args` and the CEL rules
//! of [`rules`]. `swift-operator crds` prints them; the Helm chart's copy is generated from it.

// kube's `printcolumn(name = .., type_ = ..)` lists repeat keys across columns, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod deploy;
pub mod names;
pub mod progress;
pub mod rules;
pub mod sample;
pub mod schema;
pub mod train;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{FailurePolicy, Gang, Phase, PodTemplatePatch, Scheduling, Storage};
pub use deploy::{Adapter, SwiftDeployment, SwiftDeploymentSpec, SwiftDeploymentStatus};
pub use progress::ProgressReport;
pub use sample::{ShardFailurePolicy, SwiftSampleJob, SwiftSampleJobSpec, SwiftSampleJobStatus};
pub use train::{
    SwiftTrainJob, SwiftTrainJobSpec, SwiftTrainJobStatus, TrainCommand, TrainProgress,
};

/// The API group of every kubeswift resource.
pub const GROUP: &str = "kubeswift.io";
/// The API version of every kubeswift resource.
pub const VERSION: &str = "v1alpha1";

/// A CRD could not be finished (a bug in this crate, caught by its tests).
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the {0} CRD has no openAPIV3Schema")]
    NoSchema(String),
    #[error("the {kind} CRD schema has no node '{at}' for a CEL rule")]
    NoNode { kind: String, at: String },
    #[error("the {kind} CRD schema is not valid after adding CEL rules: {source}")]
    Json {
        kind: String,
        source: serde_json::Error,
    },
    #[error("cannot render the CRDs as YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

fn finish(
    mut crd: CustomResourceDefinition,
    rules: impl FnOnce(&[String]) -> Vec<rules::CelRule>,
) -> Result<CustomResourceDefinition, CrdError> {
    let fields = schema::spec_fields(&crd);
    schema::attach_rules(&mut crd, &rules(&fields))?;
    Ok(crd)
}

/// The three finished CRDs.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    Ok(vec![
        finish(SwiftTrainJob::crd(), rules::train)?,
        {
            let mut crd = finish(SwiftDeployment::crd(), |_| rules::deploy())?;
            // Adapter names are unique: a list-map keyed by name, enforced by the apiserver
            // itself (a CEL pairwise check would be quadratic and over the cost budget).
            schema::set_extension(
                &mut crd,
                "spec.adapters",
                "x-kubernetes-list-type",
                "map".into(),
            )?;
            schema::set_extension(
                &mut crd,
                "spec.adapters",
                "x-kubernetes-list-map-keys",
                serde_json::json!(["name"]),
            )?;
            crd
        },
        finish(SwiftSampleJob::crd(), rules::sample)?,
    ])
}

/// The CRDs as one multi-document YAML stream (what `swift-operator crds` prints).
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
