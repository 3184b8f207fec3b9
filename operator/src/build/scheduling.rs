//! Queueing and gang scheduling: Kueue's queue label, and a PodGroup with the matching pod
//! label/annotation and scheduler for Volcano or scheduler-plugins' coscheduling.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kubeswift_crds::{Gang, Scheduling};
use serde_json::json;
use std::collections::BTreeMap;

use crate::build::labels::KUEUE_QUEUE;

/// Volcano's PodGroup.
pub fn volcano_pod_group() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup"),
        "podgroups",
    )
}

/// scheduler-plugins' PodGroup (coscheduling).
pub fn coscheduling_pod_group() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup"),
        "podgroups",
    )
}

/// The annotation Volcano reads to find a pod's group.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// The label coscheduling reads to find a pod's group.
pub const COSCHEDULING_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";

/// Adds the Kueue queue label to the Job's labels.
pub fn queue_label(scheduling: Option<&Scheduling>, job_labels: &mut BTreeMap<String, String>) {
    if let Some(queue) = scheduling.and_then(|s| s.queue_name.as_ref()) {
        job_labels.insert(KUEUE_QUEUE.into(), queue.clone());
    }
}

/// Marks the pods as members of `group` and returns the PodGroup (with `min_member` pods)
/// the gang scheduler waits for; `None` without gang scheduling.
pub fn gang(
    scheduling: Option<&Scheduling>,
    group: &str,
    namespace: Option<&str>,
    min_member: i32,
    labels: &BTreeMap<String, String>,
    template: &mut PodTemplateSpec,
) -> Option<DynamicObject> {
    let scheduling = scheduling?;
    let (resource, spec, scheduler) = match scheduling.gang {
        Gang::None => return None,
        Gang::Volcano => {
            let meta = template.metadata.get_or_insert_with(Default::default);
            meta.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(VOLCANO_GROUP_ANNOTATION.into(), group.into());
            let mut spec = json!({"minMember": min_member});
            if let Some(q) = &scheduling.queue_name {
                spec["queue"] = json!(q);
            }
            (volcano_pod_group(), spec, Some("volcano"))
        }
        Gang::Coscheduling => {
            let meta = template.metadata.get_or_insert_with(Default::default);
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(COSCHEDULING_GROUP_LABEL.into(), group.into());
            let mut spec = json!({"minMember": min_member});
            if let Some(t) = scheduling.schedule_timeout_seconds {
                spec["scheduleTimeoutSeconds"] = json!(t);
            }
            (coscheduling_pod_group(), spec, None)
        }
    };
    if let Some(pod) = template.spec.as_mut() {
        pod.scheduler_name = scheduling
            .scheduler_name
            .clone()
            .or(scheduler.map(String::from));
    }
    let mut pg = DynamicObject::new(group, &resource).data(json!({ "spec": spec }));
    pg.metadata = ObjectMeta {
        name: Some(group.to_string()),
        namespace: namespace.map(String::from),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    Some(pg)
}
