//! The labels every child carries: the recommended `app.kubernetes.io/*` set plus one
//! `kubeswift.io/<kind>` label naming the owning resource, which selectors use.

use std::collections::BTreeMap;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kubeswift-operator";

pub const TRAIN_JOB: &str = "kubeswift.io/train-job";
pub const DEPLOYMENT: &str = "kubeswift.io/deployment";
pub const SAMPLE_JOB: &str = "kubeswift.io/sample-job";
/// Which start of a training gang a Job and its pods belong to (0 = first start).
pub const ATTEMPT: &str = "kubeswift.io/attempt";
/// Hash of a child's desired spec (without `suspend`), to tell when it must be replaced.
pub const SPEC_HASH: &str = "kubeswift.io/spec-hash";
/// The annotation the Job controller sets on each pod of an Indexed Job.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Kueue's queue label.
pub const KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";

/// Labels selecting the pods of one resource.
pub fn selector(owner_label: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(owner_label.to_string(), name.to_string())])
}

/// The full label set of a child of `name`.
pub fn common(owner_label: &str, name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(owner_label, name);
    labels.insert("app.kubernetes.io/name".into(), "kubeswift".into());
    labels.insert("app.kubernetes.io/instance".into(), name.into());
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

/// `k=v,k2=v2` for list calls.
pub fn to_selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
