//! `SwiftDeployment`: `swift deploy`, an OpenAI-compatible server, as a Deployment + Service.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{PodTemplatePatch, Storage};

/// A LoRA adapter served beside the base model (`--adapters name=uri`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Adapter {
    /// The model name clients ask for.
    pub name: String,
    /// Where the adapter lives (`s3://...`, `pvc://claim/path`, a local path).
    pub uri: String,
}

/// Probe timing: model loading can take minutes, so the startup probe gets room first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// How long the server may take to load the model and answer `/health`.
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = 10))]
    pub startup_timeout_seconds: i32,
    #[serde(default = "default_period")]
    #[schemars(range(min = 1))]
    pub period_seconds: i32,
}

fn default_startup_timeout() -> i32 {
    1800
}

fn default_period() -> i32 {
    10
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            startup_timeout_seconds: default_startup_timeout(),
            period_seconds: default_period(),
        }
    }
}

/// Rolling update limits (as in a Deployment).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// An OpenAI-compatible endpoint serving a model (and its adapters) with `swift deploy`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeswift.io",
    version = "v1alpha1",
    kind = "SwiftDeployment",
    namespaced,
    shortname = "sdep",
    category = "kubeswift",
    status = "SwiftDeploymentStatus",
    doc = "An OpenAI-compatible model server run by `swift deploy`.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SwiftDeploymentSpec {
    /// ms-swift arguments of `swift deploy` by name.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::deploy_args")]
    pub args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Adapters served by name beside the base model (bounded so the uniqueness rule's
    /// cost stays within the apiserver's CEL budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub adapters: Vec<Adapter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplatePatch>,
    /// Where the model comes from (`storage.model`) and the credentials to read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

fn one() -> i32 {
    1
}

/// What the operator observed of a deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwiftDeploymentStatus {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The label selector of the pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The in-cluster OpenAI base URL, `http://<name>.<namespace>.svc:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
