//! `SwiftSampleJob`: `swift sample` over a dataset split into shards, one pod per shard.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{Phase, PodTemplatePatch, Storage};

/// How often each shard is retried.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardFailurePolicy {
    /// Retries of one shard before that shard counts as failed.
    #[serde(default = "default_backoff_per_index")]
    #[schemars(range(min = 0))]
    pub backoff_limit_per_index: i32,
    /// Failed shards tolerated before the whole job fails (default: none tolerated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_failed_shards: Option<i32>,
}

fn default_backoff_per_index() -> i32 {
    2
}

impl Default for ShardFailurePolicy {
    fn default() -> Self {
        ShardFailurePolicy {
            backoff_limit_per_index: default_backoff_per_index(),
            max_failed_shards: None,
        }
    }
}

/// Sampling (for RFT or distillation) with `swift sample`, one pod per `data_range` shard.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeswift.io",
    version = "v1alpha1",
    kind = "SwiftSampleJob",
    namespaced,
    shortname = "ssj",
    category = "kubeswift",
    status = "SwiftSampleJobStatus",
    doc = "`swift sample` over a dataset split into shards, one pod per shard.",
    printcolumn(
        name = "Shards done",
        type_ = "string",
        json_path = ".status.shardsDone"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SwiftSampleJobSpec {
    /// ms-swift arguments of `swift sample` by name.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::sample_args")]
    pub args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Shards of the dataset; shard `i` runs `swift sample --data_range i shards`.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub shards: i32,
    /// Shards running at once (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplatePatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<ShardFailurePolicy>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

fn one() -> i32 {
    1
}

/// What the operator observed of a sample job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwiftSampleJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub shards_succeeded: i32,
    #[serde(default)]
    pub shards_failed: i32,
    /// `succeeded/shards` for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_done: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
