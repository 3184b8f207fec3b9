//! `SwiftTrainJob`: a (multi-node) `swift sft | pt | rlhf` run.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use kubeswift_args::Command;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{FailurePolicy, Phase, PodTemplatePatch, Scheduling, Storage};

/// The training subcommand a job runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainCommand {
    /// `swift sft`: supervised fine-tuning.
    #[default]
    Sft,
    /// `swift pt`: (continued) pre-training.
    Pt,
    /// `swift rlhf`: preference alignment.
    Rlhf,
}

impl From<TrainCommand> for Command {
    fn from(c: TrainCommand) -> Command {
        match c {
            TrainCommand::Sft => Command::Sft,
            TrainCommand::Pt => Command::Pt,
            TrainCommand::Rlhf => Command::Rlhf,
        }
    }
}

/// A training run on `numNodes` nodes: a headless Service and an Indexed Job whose pods run
/// `swift <command> --<arg> <value> ...` and meet at rank 0 for rendezvous.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeswift.io",
    version = "v1alpha1",
    kind = "SwiftTrainJob",
    namespaced,
    shortname = "stj",
    category = "kubeswift",
    status = "SwiftTrainJobStatus",
    doc = "A fine-tuning or pre-training run of `swift sft | pt | rlhf` on one or more nodes.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.numNodes"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.summary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SwiftTrainJobSpec {
    /// The `swift` subcommand: sft, pt or rlhf.
    #[serde(default)]
    pub command: TrainCommand,
    /// ms-swift arguments by name (`lora_rank: 8`), as on `swift <command>`'s command line.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::train_args")]
    pub args: Map<String, Value>,
    /// The container image holding the `swift` binary (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Nodes (pods) in the gang.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub num_nodes: i32,
    /// Worker processes per node: a number, or `auto` for the GPUs each node requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_proc_per_node: Option<IntOrString>,
    /// CPU, memory and GPUs of each node's `swift` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_per_node: Option<ResourceRequirements>,
    /// Extra environment of the `swift` container (rendezvous names are reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplatePatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Hold the job (no pods run). Setting it on a running job stops its pods; clearing it
    /// starts them again, resuming from the last checkpoint.
    #[serde(default)]
    pub suspend: bool,
    /// Delete the job this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Fail the job when it has run this long in total, across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
}

fn one() -> i32 {
    1
}

/// Training progress as the operator last read it from rank 0.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainProgress {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The last complete checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// `step/total (percent)` for `kubectl get`.
    pub summary: String,
    /// When the operator read this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<Time>,
}

/// What the operator observed of a training job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwiftTrainJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Created, Running, Restarting, Suspended, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the first pods of the first gang started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Gang restarts so far.
    #[serde(default)]
    pub restarts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TrainProgress>,
}
