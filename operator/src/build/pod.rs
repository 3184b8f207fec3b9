//! The `swift` container and the pod around it, and the user's typed pod template patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubeswift_crds::PodTemplatePatch;

use crate::build::BuildError;
use crate::build::storage::Mounts;

/// The name of the container that runs `swift`.
pub const CONTAINER: &str = "swift";

/// A pod template running `swift <argv...>`.
pub fn swift_pod(
    image: &str,
    argv: Vec<String>,
    resources: Option<&ResourceRequirements>,
    labels: BTreeMap<String, String>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(image.to_string()),
                command: Some(vec!["swift".into()]),
                args: Some(argv),
                resources: resources.cloned(),
                // The final progress report is read from here (see PROGRESS.md).
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// The `swift` container of a template built by [`swift_pod`].
pub fn container(template: &mut PodTemplateSpec) -> Option<&mut Container> {
    template
        .spec
        .as_mut()?
        .containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
}

/// Appends env vars to the `swift` container.
pub fn add_env(template: &mut PodTemplateSpec, env: impl IntoIterator<Item = EnvVar>) {
    if let Some(c) = container(template) {
        c.env.get_or_insert_with(Vec::new).extend(env);
    }
}

/// The user's `spec.env`, refusing names the operator reserves.
pub fn user_env(env: &[EnvVar], reserved: &[&str]) -> Result<Vec<EnvVar>, BuildError> {
    for (i, e) in env.iter().enumerate() {
        if reserved.contains(&e.name.as_str()) {
            return Err(BuildError::invalid(
                format!("spec.env[{i}].name"),
                format!("{} is set by the operator and cannot be given", e.name),
            ));
        }
    }
    Ok(env.to_vec())
}

/// Adds storage volumes, mounts and credentials.
pub fn add_mounts(template: &mut PodTemplateSpec, mounts: &Mounts) {
    if let Some(spec) = template.spec.as_mut()
        && !mounts.volumes.is_empty()
    {
        spec.volumes
            .get_or_insert_with(Vec::new)
            .extend(mounts.volumes.iter().cloned());
    }
    if let Some(c) = container(template) {
        if !mounts.volume_mounts.is_empty() {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .extend(mounts.volume_mounts.iter().cloned());
        }
        if !mounts.env_from.is_empty() {
            c.env_from
                .get_or_insert_with(Vec::new)
                .extend(mounts.env_from.iter().cloned());
        }
    }
}

fn non_empty<T>(v: &[T]) -> Option<Vec<T>>
where
    T: Clone,
{
    (!v.is_empty()).then(|| v.to_vec())
}

/// Applies the user's pod template patch. Operator labels win over the user's (the
/// selectors depend on them).
pub fn apply_patch(template: &mut PodTemplateSpec, patch: Option<&PodTemplatePatch>) {
    let Some(patch) = patch else { return };
    let meta = template.metadata.get_or_insert_with(Default::default);
    if !patch.labels.is_empty() {
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &patch.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if !patch.annotations.is_empty() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(patch.annotations.clone());
    }
    if let Some(spec) = template.spec.as_mut() {
        if !patch.node_selector.is_empty() {
            spec.node_selector = Some(patch.node_selector.clone());
        }
        if let Some(t) = non_empty(&patch.tolerations) {
            spec.tolerations = Some(t);
        }
        if patch.affinity.is_some() {
            spec.affinity = patch.affinity.clone();
        }
        if patch.priority_class_name.is_some() {
            spec.priority_class_name = patch.priority_class_name.clone();
        }
        if patch.service_account_name.is_some() {
            spec.service_account_name = patch.service_account_name.clone();
        }
        if patch.termination_grace_period_seconds.is_some() {
            spec.termination_grace_period_seconds = patch.termination_grace_period_seconds;
        }
        if let Some(s) = non_empty(&patch.image_pull_secrets) {
            spec.image_pull_secrets = Some(s);
        }
        if !patch.volumes.is_empty() {
            spec.volumes
                .get_or_insert_with(Vec::new)
                .extend(patch.volumes.iter().cloned());
        }
    }
    if !patch.volume_mounts.is_empty()
        && let Some(c) = container(template)
    {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(patch.volume_mounts.iter().cloned());
    }
}
