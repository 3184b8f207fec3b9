//! SwiftSampleJob -> one Indexed Job `<job>` with an index per shard; shard `i` runs
//! `swift sample ... --data_range i <shards>`, retried `backoffLimitPerIndex` times.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kubeswift_args::{Command, exit};
use kubeswift_crds::{SwiftSampleJob, names};
use serde_json::json;

use crate::build::argv::ArgList;
use crate::build::labels::{self, COMPLETION_INDEX, SAMPLE_JOB, SPEC_HASH};
use crate::build::storage::{self, Mounts};
use crate::build::{BuildError, Defaults, hash, pod};

/// The env var holding the pod's shard index; the container's args refer to it.
pub const SHARD_INDEX_ENV: &str = "KUBESWIFT_SHARD_INDEX";

/// Refuses names whose pod hostnames would overflow.
pub fn check_name(name: &str, shards: i32) -> Result<(), BuildError> {
    if shards < 1 {
        return Err(BuildError::invalid("spec.shards", "must be at least 1"));
    }
    if !names::is_dns1035_label(name) {
        return Err(BuildError::invalid(
            "metadata.name",
            format!("'{name}' must be a DNS-1035 label"),
        ));
    }
    let max = names::sample_name_max(shards as u32);
    if name.len() > max {
        return Err(BuildError::invalid(
            "metadata.name",
            format!(
                "'{name}' has {} characters; with {shards} shards at most {max} fit",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// The `swift sample` arguments, validated with `--data_range 0 <shards>` standing in for
/// every shard's own index; returns the argv with the index taken from the pod's env.
pub fn argv(job: &SwiftSampleJob) -> Result<(Vec<String>, Mounts), BuildError> {
    let mut args = ArgList::from_spec(&job.spec.args);
    let mut mounts = Mounts::default();
    storage::apply(
        job.spec.storage.as_ref(),
        &mut args,
        &mut mounts,
        Some("output_dir"),
    )?;
    let shards = job.spec.shards;
    args.add_reserved("data_range", json!([0, shards]), "one shard per pod")?;
    args.validate(Command::Sample)?;
    args.remove("data_range");
    let mut argv = args.to_argv(Command::Sample);
    // Kubernetes expands $(VAR) in container args from the container's env.
    argv.extend([
        "--data_range".into(),
        format!("$({SHARD_INDEX_ENV})"),
        shards.to_string(),
    ]);
    Ok((argv, mounts))
}

/// The Indexed Job of a sample job.
pub fn job(job: &SwiftSampleJob, defaults: &Defaults) -> Result<Job, BuildError> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let spec = &job.spec;
    check_name(name, spec.shards)?;
    let (argv, mounts) = argv(job)?;
    let labels = labels::common(SAMPLE_JOB, name, "sample");
    let image = spec.image.as_deref().unwrap_or(&defaults.image);
    let mut template = pod::swift_pod(image, argv, spec.resources.as_ref(), labels.clone());
    pod::add_env(
        &mut template,
        [EnvVar {
            name: SHARD_INDEX_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
    );
    pod::add_mounts(&mut template, &mounts);
    pod::add_env(&mut template, pod::user_env(&spec.env, &[SHARD_INDEX_ENV])?);
    pod::apply_patch(&mut template, spec.pod_template.as_ref());
    if let Some(p) = template.spec.as_mut() {
        // backoffLimitPerIndex needs pods that are not restarted in place.
        p.restart_policy = Some("Never".into());
    }
    let policy = spec.failure_policy.clone().unwrap_or_default();
    let mut job_spec = JobSpec {
        completion_mode: Some("Indexed".into()),
        completions: Some(spec.shards),
        parallelism: Some(spec.parallelism.unwrap_or(spec.shards).min(spec.shards)),
        backoff_limit_per_index: Some(policy.backoff_limit_per_index),
        max_failed_indexes: policy.max_failed_shards,
        // A usage error or a feature this build does not have fails the shard at once:
        // retrying cannot help.
        pod_failure_policy: Some(PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailIndex".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(pod::CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![exit::USAGE.into(), exit::NOT_BUILT.into()],
                }),
                on_pod_conditions: None,
            }],
        }),
        active_deadline_seconds: spec.active_deadline_seconds,
        template,
        ..Default::default()
    };
    let spec_hash = hash::of(&job_spec);
    job_spec.suspend = Some(spec.suspend);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(names::sample_job(name)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(SPEC_HASH.to_string(), spec_hash)])),
            owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(job_spec),
        status: None,
    })
}
