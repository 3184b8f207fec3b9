//! Spec and status pieces the three resources share: storage, pod template patch, failure
//! policy, scheduling, phases and the names of conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the model, the data and the outputs live. Each URI becomes the matching `swift`
/// argument (`--model`, `--dataset`, `--output_dir`); `pvc://claim/path` mounts the claim
/// and passes the mounted path, any other URI (`s3://`, `gs://`, a hub id) is passed as is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// The model: `s3://bucket/prefix`, `pvc://claim/path`, or a hub id such as `Qwen/Qwen2.5-0.5B`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Datasets, in ms-swift's `path[:subset][#N]` syntax, with the same URI schemes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataset: Vec<String>,
    /// The output root: checkpoints are written here and every start resumes from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A Secret whose keys become environment variables of every pod (e.g.
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectReference>,
}

/// A typed patch over the pods the operator creates: scheduling, identity, volumes and
/// metadata. Fields not listed here are owned by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplatePatch {
    /// Labels added to every pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra volumes of the pod (the operator adds its own for `pvc://` storage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra mounts of the `swift` container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Seconds between SIGTERM and SIGKILL when a pod is stopped (suspend, preemption,
    /// eviction, deletion): `swift` finishes the step under way and saves it in this time.
    /// Training pods get 120 unless set (a full fine-tune's checkpoint upload outlasts
    /// Kubernetes' 30); the other pods keep Kubernetes' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// When a failed gang is restarted and when it fails for good.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// How many times a failed gang is restarted (as a whole, resuming from the last
    /// checkpoint) before the job fails.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0))]
    pub max_restarts: i32,
    /// Container exit codes that fail the job at once, without a restart (2 is a usage
    /// error, 3 a feature this build does not have: a restart would fail the same way).
    #[serde(default = "default_fail_exit_codes")]
    pub fail_on_exit_codes: Vec<i32>,
}

fn default_max_restarts() -> i32 {
    3
}

fn default_fail_exit_codes() -> Vec<i32> {
    use kubeswift_args::exit;
    vec![exit::USAGE.into(), exit::NOT_BUILT.into()]
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_restarts: default_max_restarts(),
            fail_on_exit_codes: default_fail_exit_codes(),
        }
    }
}

/// Which gang scheduler places all pods of a job at once (or none of them).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gang {
    /// No gang scheduling: pods are scheduled one by one.
    #[default]
    None,
    /// Volcano: a `scheduling.volcano.sh` PodGroup and `schedulerName: volcano`.
    Volcano,
    /// scheduler-plugins coscheduling: a `scheduling.x-k8s.io` PodGroup and the pod-group label.
    Coscheduling,
}

/// Queueing and gang scheduling. May change only while the job is suspended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// The Kueue LocalQueue (`kueue.x-k8s.io/queue-name`). Kueue admits the job by
    /// unsuspending it; create the job with `suspend: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    #[serde(default)]
    pub gang: Gang,
    /// The scheduler of the pods (default: `volcano` for volcano gangs, else the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// How long a coscheduling gang may wait for all its pods to be placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// The lifecycle phase shown in `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children created, waiting for pods.
    Pending,
    /// Held by `suspend: true` (for example by Kueue until admitted).
    Suspended,
    Running,
    /// The gang failed and is being restarted from the last checkpoint.
    Restarting,
    Succeeded,
    Failed,
}

impl Phase {
    /// Whether the job has finished (no further work will run).
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// The name as shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Suspended => "Suspended",
            Phase::Running => "Running",
            Phase::Restarting => "Restarting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Every phase (for metrics that report zero for absent phases).
    pub const ALL: &'static [Phase] = &[
        Phase::Pending,
        Phase::Suspended,
        Phase::Running,
        Phase::Restarting,
        Phase::Succeeded,
        Phase::Failed,
    ];
}

/// Condition types (`status.conditions[].type`).
pub mod condition {
    pub const CREATED: &str = "Created";
    pub const RUNNING: &str = "Running";
    pub const RESTARTING: &str = "Restarting";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    /// SwiftDeployment: enough replicas serve.
    pub const AVAILABLE: &str = "Available";
}

/// Condition reasons (`status.conditions[].reason`), CamelCase as Kubernetes wants.
pub mod reason {
    pub const CHILDREN_CREATED: &str = "ChildrenCreated";
    pub const PODS_RUNNING: &str = "PodsRunning";
    pub const PODS_PENDING: &str = "PodsPending";
    pub const SUSPENDED: &str = "Suspended";
    pub const RESUMED: &str = "Resumed";
    pub const GANG_FAILED: &str = "GangFailed";
    pub const COMPLETED: &str = "Completed";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const EXIT_CODE: &str = "ExitCode";
    pub const INVALID_ARGS: &str = "InvalidArgs";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SHARDS_FAILED: &str = "ShardsFailed";
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}
