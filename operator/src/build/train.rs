//! SwiftTrainJob -> headless Service `<job>` + Indexed Job `<job>-node` (+ PodGroup for gang
//! scheduling, + the Secret holding the progress token). One function per concern, applied
//! in turn: arguments, torch env wiring, progress endpoint, storage, user env and template
//! patch, scheduling, restart policy, suspend.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec,
    ResourceRequirements, Secret, SecretKeySelector, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::core::DynamicObject;
use kubeswift_args::Command;
use kubeswift_args::dist_env::TERMINATION_GRACE_ENV;
use kubeswift_crds::names;
use kubeswift_crds::progress::{PROGRESS_PORT, PROGRESS_PORT_ENV, PROGRESS_TOKEN_ENV};
use kubeswift_crds::rules::RESERVED_ENV;
use kubeswift_crds::{FailurePolicy, SwiftTrainJob};
use serde_json::Value;

use crate::build::argv::ArgList;
use crate::build::labels::{self, ATTEMPT, COMPLETION_INDEX, SPEC_HASH, TRAIN_JOB};
use crate::build::storage::{self, Mounts};
use crate::build::{BuildError, Defaults, hash, pod, scheduling};

/// The rendezvous port on rank 0 (torchrun's default).
pub const MASTER_PORT: u16 = 29500;

/// What a training job needs besides its spec.
#[derive(Debug, Clone)]
pub struct TrainInputs<'a> {
    pub defaults: &'a Defaults,
    /// Which start of the gang this is: 0 first, then one more per restart.
    pub attempt: i32,
    /// The bearer token of rank 0's `/progress` (None offline: no Secret is rendered).
    pub progress_token: Option<String>,
    /// Whether the Job exists already (once Kueue admitted a queued Job, it owns `suspend`).
    pub job_exists: bool,
}

/// The desired children of a training job.
#[derive(Debug, Clone)]
pub struct TrainChildren {
    pub service: Service,
    pub job: Job,
    pub pod_group: Option<DynamicObject>,
    pub progress_secret: Option<Secret>,
}

/// The Secret holding the progress token: `<job>-progress`.
pub fn progress_secret_name(job: &str) -> String {
    format!("{job}-progress")
}

fn meta(job: &SwiftTrainJob, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels),
        // None offline (no uid): `render` prints children without owners.
        owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Refuses names whose children would not be valid (the CEL rule's twin, for clusters
/// without CEL and for `render`).
pub fn check_name(name: &str, num_nodes: i32) -> Result<(), BuildError> {
    if num_nodes < 1 {
        return Err(BuildError::invalid("spec.numNodes", "must be at least 1"));
    }
    if !names::is_dns1035_label(name) {
        return Err(BuildError::invalid(
            "metadata.name",
            format!("'{name}' must be a DNS-1035 label (it names the job's Service)"),
        ));
    }
    let max = names::train_name_max(num_nodes as u32);
    if name.len() > max {
        return Err(BuildError::invalid(
            "metadata.name",
            format!(
                "'{name}' has {} characters; with {num_nodes} nodes at most {max} fit \
                 (pod hostname {} must be at most 63)",
                name.len(),
                names::train_pod_hostname(name, num_nodes as u32 - 1)
            ),
        ));
    }
    Ok(())
}

/// GPUs requested per node (any `*/gpu` resource), for `numProcPerNode: auto`.
fn gpus(resources: Option<&ResourceRequirements>) -> i32 {
    let Some(r) = resources else { return 0 };
    let count =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.as_ref()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.ends_with("/gpu"))
                        .filter_map(|(_, q)| q.0.parse::<i32>().ok())
                        .sum::<i32>()
                })
                .unwrap_or(0)
        };
    count(&r.limits).max(count(&r.requests))
}

/// Worker processes per node: the number given, or with `auto` (and by default) the GPUs
/// each node requests (1 without GPUs).
pub fn nproc_per_node(job: &SwiftTrainJob) -> Result<i32, BuildError> {
    let auto = || gpus(job.spec.resources_per_node.as_ref()).max(1);
    match &job.spec.num_proc_per_node {
        None => Ok(auto()),
        Some(IntOrString::Int(n)) if *n >= 1 => Ok(*n),
        Some(IntOrString::String(s)) if s == "auto" => Ok(auto()),
        Some(IntOrString::String(s)) if s.parse::<i32>().is_ok_and(|n| n >= 1) => {
            Ok(s.parse().unwrap_or(1))
        }
        Some(other) => Err(BuildError::invalid(
            "spec.numProcPerNode",
            format!("{other:?} must be a number >= 1 or 'auto'"),
        )),
    }
}

/// The `swift` arguments: the user's, storage's, and `--resume_from_checkpoint <output>`.
pub fn arguments(job: &SwiftTrainJob) -> Result<(ArgList, Mounts), BuildError> {
    let mut args = ArgList::from_spec(&job.spec.args);
    let mut mounts = Mounts::default();
    let stored = storage::apply(
        job.spec.storage.as_ref(),
        &mut args,
        &mut mounts,
        Some("output_dir"),
    )?;
    let output = stored.or_else(|| {
        args.get("output_dir")
            .and_then(Value::as_str)
            .map(String::from)
    });
    let Some(output) = output else {
        return Err(BuildError::invalid(
            "spec.storage.output",
            "a training job needs an output root (spec.storage.output or spec.args.output_dir) \
             that outlives its pods: every start resumes from its last checkpoint",
        ));
    };
    // Every start, first and restarts alike, resumes from the output root; the runtime
    // starts fresh when no complete checkpoint is there yet.
    args.add_reserved(
        "resume_from_checkpoint",
        Value::from(output),
        "every start resumes from the output root",
    )?;
    args.validate(Command::from(job.spec.command))?;
    Ok((args, mounts))
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// torchrun's contract, under both names (plain and `PET_*`): NNODES, NODE_RANK from the
/// completion index, MASTER_ADDR = rank 0's stable DNS name, MASTER_PORT, NPROC_PER_NODE.
pub fn torch_env(template: &mut PodTemplateSpec, job: &str, nnodes: i32, nproc: i32) {
    let rank_field = format!("metadata.annotations['{COMPLETION_INDEX}']");
    let master = names::train_master_addr(job);
    let mut vars = Vec::new();
    for prefix in ["", "PET_"] {
        vars.push(env(&format!("{prefix}NNODES"), nnodes));
        vars.push(env_from_field(&format!("{prefix}NODE_RANK"), &rank_field));
        vars.push(env(&format!("{prefix}MASTER_ADDR"), &master));
        vars.push(env(&format!("{prefix}MASTER_PORT"), MASTER_PORT));
        vars.push(env(&format!("{prefix}NPROC_PER_NODE"), nproc));
    }
    pod::add_env(template, vars);
    if let Some(c) = pod::container(template) {
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            name: Some("rendezvous".into()),
            container_port: MASTER_PORT.into(),
            ..Default::default()
        });
    }
}

/// Rank 0's `/progress` endpoint: its port and the token from the job's Secret.
pub fn progress_env(template: &mut PodTemplateSpec, job: &str) {
    let token = EnvVar {
        name: PROGRESS_TOKEN_ENV.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: progress_secret_name(job),
                key: "token".into(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    pod::add_env(template, [env(PROGRESS_PORT_ENV, PROGRESS_PORT), token]);
    if let Some(c) = pod::container(template) {
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            name: Some("progress".into()),
            container_port: PROGRESS_PORT.into(),
            ..Default::default()
        });
    }
}

/// Training pods' termination grace when the template patch gives none: the time to finish
/// the step under way and save it after SIGTERM (a full fine-tune's upload to object storage
/// outlasts Kubernetes' default 30 s; a pod that saved sooner exits sooner).
pub const TERMINATION_GRACE_SECONDS: i64 = 120;

/// Sets the pods' termination grace (the user's, else [`TERMINATION_GRACE_SECONDS`]) and
/// passes the same number in `KUBESWIFT_TERMINATION_GRACE_SECONDS`: a container cannot read
/// its pod's spec, and the launcher cuts its own deadline for the workers from it.
pub fn termination_grace(template: &mut PodTemplateSpec) {
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let grace = *spec
        .termination_grace_period_seconds
        .get_or_insert(TERMINATION_GRACE_SECONDS);
    pod::add_env(template, [env(TERMINATION_GRACE_ENV, grace)]);
}

/// One failed pod fails the whole gang at once (backoffLimit 0, the operator restarts the
/// gang); exit codes in `failOnExitCodes` are marked so the operator does not restart;
/// preempted/evicted pods (DisruptionTarget) are replaced without counting.
pub fn restart_policy(spec: &mut JobSpec, policy: &FailurePolicy) {
    spec.backoff_limit = Some(0);
    if let Some(pod) = spec.template.spec.as_mut() {
        pod.restart_policy = Some("Never".into());
    }
    let mut rules = vec![PodFailurePolicyRule {
        action: "Ignore".into(),
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
        }]),
        on_exit_codes: None,
    }];
    if !policy.fail_on_exit_codes.is_empty() {
        rules.push(PodFailurePolicyRule {
            action: "FailJob".into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: Some(pod::CONTAINER.into()),
                operator: "In".into(),
                values: policy.fail_on_exit_codes.clone(),
            }),
            on_pod_conditions: None,
        });
    }
    spec.pod_failure_policy = Some(PodFailurePolicy { rules });
}

/// The Job's `suspend`: the resource's `suspend: true` always holds it. A queued job (Kueue)
/// is created suspended and then left to Kueue, which unsuspends it on admission.
pub fn suspend(job: &SwiftTrainJob, job_exists: bool) -> Option<bool> {
    let queued = job
        .spec
        .scheduling
        .as_ref()
        .is_some_and(|s| s.queue_name.is_some());
    match (job.spec.suspend, queued, job_exists) {
        (true, _, _) => Some(true),
        (false, true, false) => Some(true),
        (false, true, true) => None,
        (false, false, _) => Some(false),
    }
}

/// The headless Service giving each pod the stable name `<job>-node-<i>.<job>`.
pub fn service(job: &SwiftTrainJob, name: &str) -> Service {
    Service {
        metadata: meta(
            job,
            names::train_service(name),
            labels::common(TRAIN_JOB, name, "train"),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Workers must resolve rank 0 before it is Ready, or rendezvous never starts.
            publish_not_ready_addresses: Some(true),
            selector: Some(labels::selector(TRAIN_JOB, name)),
            ports: Some(vec![
                ServicePort {
                    name: Some("rendezvous".into()),
                    port: MASTER_PORT.into(),
                    target_port: Some(IntOrString::Int(MASTER_PORT.into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("progress".into()),
                    port: PROGRESS_PORT.into(),
                    target_port: Some(IntOrString::Int(PROGRESS_PORT.into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Every child of a training job.
pub fn children(job: &SwiftTrainJob, inputs: &TrainInputs) -> Result<TrainChildren, BuildError> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let spec = &job.spec;
    check_name(name, spec.num_nodes)?;
    let user_env = pod::user_env(&spec.env, RESERVED_ENV)?;
    let nproc = nproc_per_node(job)?;
    let (args, mounts) = arguments(job)?;

    let mut pod_labels = labels::common(TRAIN_JOB, name, "train");
    pod_labels.insert(ATTEMPT.into(), inputs.attempt.to_string());
    let image = spec.image.as_deref().unwrap_or(&inputs.defaults.image);
    let argv = args.to_argv(Command::from(spec.command));
    let mut template = pod::swift_pod(
        image,
        argv,
        spec.resources_per_node.as_ref(),
        pod_labels.clone(),
    );

    torch_env(&mut template, name, spec.num_nodes, nproc);
    progress_env(&mut template, name);
    pod::add_mounts(&mut template, &mounts);
    pod::add_env(&mut template, user_env);
    pod::apply_patch(&mut template, spec.pod_template.as_ref());
    termination_grace(&mut template);
    if let Some(pod_spec) = template.spec.as_mut() {
        // Pods of an Indexed Job get the hostname <job>-node-<i>; the subdomain makes it resolvable.
        pod_spec.subdomain = Some(names::train_service(name));
    }

    let mut job_labels = pod_labels;
    scheduling::queue_label(spec.scheduling.as_ref(), &mut job_labels);
    let pod_group = scheduling::gang(
        spec.scheduling.as_ref(),
        &names::train_pod_group(name),
        job.metadata.namespace.as_deref(),
        spec.num_nodes,
        &labels::common(TRAIN_JOB, name, "train"),
        &mut template,
    );
    let mut job_spec = JobSpec {
        completion_mode: Some("Indexed".into()),
        completions: Some(spec.num_nodes),
        parallelism: Some(spec.num_nodes),
        template,
        ..Default::default()
    };
    restart_policy(
        &mut job_spec,
        &spec.failure_policy.clone().unwrap_or_default(),
    );
    let spec_hash = hash::of(&job_spec);
    job_spec.suspend = suspend(job, inputs.job_exists);

    let mut job_meta = meta(job, names::train_job(name), job_labels);
    job_meta.annotations = Some(BTreeMap::from([(SPEC_HASH.to_string(), spec_hash)]));

    let pod_group = pod_group.map(|mut pg| {
        pg.metadata.owner_references = job.controller_owner_ref(&()).map(|o| vec![o]);
        pg
    });
    let progress_secret = inputs.progress_token.as_ref().map(|token| Secret {
        metadata: meta(
            job,
            progress_secret_name(name),
            labels::common(TRAIN_JOB, name, "train"),
        ),
        string_data: Some(BTreeMap::from([("token".to_string(), token.clone())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    });
    Ok(TrainChildren {
        service: service(job, name),
        job: Job {
            metadata: job_meta,
            spec: Some(job_spec),
            status: None,
        },
        pod_group,
        progress_secret,
    })
}
