//! The CEL validation rules (`x-kubernetes-validations`) of the three CRDs, as data: where
//! each rule sits in the schema, the expression, and the message the user sees.
//!
//! - names short enough for every child name and pod hostname to be a 63-character label;
//! - `numNodes >= 1`, `numProcPerNode` a positive number or `auto`;
//! - reserved environment variables (the rendezvous contract) refused in `spec.env`;
//! - a started job's spec is frozen except `suspend` (and the TTL); scheduling fields
//!   (`podTemplate`, `scheduling`, `activeDeadlineSeconds`) may change while the job is
//!   suspended, including in the same update that unsuspends it (what Kueue does); every
//!   other field may change only while the job is suspended and has never started.

use serde_json::{Value, json};

use crate::names::DNS_LABEL_MAX;

/// One `x-kubernetes-validations` entry and where it sits in the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct CelRule {
    /// The schema node, as a dotted path from the root (`""`, `spec`, `spec.env`).
    pub at: String,
    pub rule: String,
    pub message: String,
    /// The field the error is reported on (`.spec.args`), for rules at the root.
    pub field_path: Option<String>,
}

impl CelRule {
    fn new(at: &str, rule: impl Into<String>, message: impl Into<String>) -> Self {
        CelRule {
            at: at.to_string(),
            rule: rule.into(),
            message: message.into(),
            field_path: None,
        }
    }

    fn field_path(mut self, path: impl Into<String>) -> Self {
        self.field_path = Some(path.into());
        self
    }

    /// The entry as it appears in the CRD.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"rule": self.rule, "message": self.message});
        if let Some(p) = &self.field_path {
            v["fieldPath"] = Value::from(p.as_str());
        }
        v
    }
}

/// Environment variables the operator sets for the rendezvous; a user value would silently
/// break it, so the schema refuses them.
pub const RESERVED_ENV: &[&str] = &[
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NPROC_PER_NODE",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "PET_NNODES",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PET_NPROC_PER_NODE",
    "JOB_COMPLETION_INDEX",
    kubeswift_args::dist_env::TERMINATION_GRACE_ENV,
    crate::progress::PROGRESS_TOKEN_ENV,
    crate::progress::PROGRESS_PORT_ENV,
];

/// Spec fields of a job that may always change.
pub const ALWAYS_MUTABLE: &[&str] = &["suspend", "ttlSecondsAfterFinished"];

/// Spec fields of a job that may change while it is suspended (Kueue edits them when it
/// admits a job, in the same update that clears `suspend`).
pub const MUTABLE_WHILE_SUSPENDED: &[&str] =
    &["podTemplate", "scheduling", "activeDeadlineSeconds"];

const DNS1035: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

fn name_is_label() -> CelRule {
    CelRule::new(
        "",
        format!("self.metadata.name.matches('{DNS1035}')"),
        "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting \
         with a letter): it names the job's Service",
    )
    .field_path(".metadata.name")
}

/// `has(self.spec.f) == has(oldSelf.spec.f) && value unchanged`: presence counts as a change.
fn unchanged(field: &str) -> String {
    format!(
        "(has(self.spec.{field}) == has(oldSelf.spec.{field})) && \
         (!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field})"
    )
}

const OLD_SUSPENDED: &str = "(has(oldSelf.spec.suspend) && oldSelf.spec.suspend)";
const STARTED: &str = "(has(oldSelf.status) && has(oldSelf.status.startTime))";

/// The transition rules freezing a job's spec, one per field so the error names it.
fn immutability(spec_fields: &[String]) -> Vec<CelRule> {
    let mut rules = Vec::new();
    for field in spec_fields {
        if ALWAYS_MUTABLE.contains(&field.as_str()) {
            continue;
        }
        let rule = if MUTABLE_WHILE_SUSPENDED.contains(&field.as_str()) {
            CelRule::new(
                "",
                format!("{OLD_SUSPENDED} || {}", unchanged(field)),
                format!("spec.{field} can change only while the job is suspended"),
            )
        } else {
            CelRule::new(
                "",
                format!("({OLD_SUSPENDED} && !{STARTED}) || {}", unchanged(field)),
                format!(
                    "spec.{field} cannot change once the job has been created unsuspended or \
                     has started; delete and re-create the job to change it"
                ),
            )
        };
        rules.push(rule.field_path(format!(".spec.{field}")));
    }
    rules
}

fn reserved_env(at: &str) -> CelRule {
    let names: Vec<String> = RESERVED_ENV.iter().map(|n| format!("'{n}'")).collect();
    CelRule::new(
        at,
        format!("self.all(e, !(e.name in [{}]))", names.join(", ")),
        format!(
            "these environment variables are set by the operator and cannot be given: {}",
            RESERVED_ENV.join(", ")
        ),
    )
}

/// The rules of SwiftTrainJob; `spec_fields` are the spec's properties (for immutability).
pub fn train(spec_fields: &[String]) -> Vec<CelRule> {
    let longest = DNS_LABEL_MAX - "-node-".len();
    let mut rules = vec![
        name_is_label(),
        CelRule::new(
            "",
            format!("size(self.metadata.name) + size(string(self.spec.numNodes - 1)) <= {longest}"),
            format!(
                "metadata.name is too long: pod hostnames <name>-node-<index> must fit in \
                 {DNS_LABEL_MAX} characters, so the name may have at most {longest} characters \
                 minus the digits of numNodes-1"
            ),
        )
        .field_path(".metadata.name"),
        CelRule::new(
            "spec",
            "self.numNodes >= 1",
            "spec.numNodes must be at least 1",
        )
        .field_path(".numNodes"),
        CelRule::new(
            "spec.numProcPerNode",
            // string() reads both the int and the string form of an int-or-string.
            "string(self) == 'auto' || string(self).matches('^[1-9][0-9]*$')",
            "spec.numProcPerNode must be a number >= 1 or 'auto' (the GPUs each node requests)",
        ),
        reserved_env("spec.env"),
    ];
    rules.extend(immutability(spec_fields));
    rules
}

/// The rules of SwiftSampleJob.
pub fn sample(spec_fields: &[String]) -> Vec<CelRule> {
    let longest = DNS_LABEL_MAX - "-".len();
    let mut rules = vec![
        name_is_label(),
        CelRule::new(
            "",
            format!("size(self.metadata.name) + size(string(self.spec.shards - 1)) <= {longest}"),
            format!(
                "metadata.name is too long: pod hostnames <name>-<shard> must fit in \
                 {DNS_LABEL_MAX} characters"
            ),
        )
        .field_path(".metadata.name"),
        CelRule::new("spec", "self.shards >= 1", "spec.shards must be at least 1")
            .field_path(".shards"),
    ];
    rules.extend(immutability(spec_fields));
    rules
}

/// The rules of SwiftDeployment.
pub fn deploy() -> Vec<CelRule> {
    vec![
        name_is_label(),
        CelRule::new(
            "",
            format!("size(self.metadata.name) <= {DNS_LABEL_MAX}"),
            format!(
                "metadata.name may have at most {DNS_LABEL_MAX} characters (it names the Service)"
            ),
        )
        .field_path(".metadata.name"),
    ]
}
