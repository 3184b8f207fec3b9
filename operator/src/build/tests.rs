//! Builder tests: every rule of the desired children, without an API server.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use kube::core::ObjectMeta;
use kubeswift_crds::{SwiftDeployment, SwiftSampleJob, SwiftTrainJob};
use serde_json::{Value, json};

use super::train::{TrainInputs, children};
use super::{BuildError, Defaults, deploy, sample};

fn train_job(name: &str, spec: Value) -> SwiftTrainJob {
    let mut job: SwiftTrainJob = serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftTrainJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap();
    job.metadata.uid = Some("u-1".into());
    job
}

fn base_spec() -> Value {
    json!({
        "numNodes": 2,
        "resourcesPerNode": {"limits": {"nvidia.com/gpu": "4"}},
        "storage": {"model": "Qwen/Qwen2.5-0.5B", "dataset": ["s3://d/a.jsonl"],
                    "output": "s3://ckpt/run", "credentialsSecretRef": {"name": "s3"}},
        "args": {"train_type": "lora", "lora_rank": 8},
    })
}

fn inputs(defaults: &Defaults, attempt: i32) -> TrainInputs<'_> {
    TrainInputs {
        defaults,
        attempt,
        progress_token: Some("tok".into()),
        job_exists: false,
    }
}

fn container(job: &Job) -> &Container {
    &job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

fn value(c: &Container, name: &str) -> String {
    env(c, name).value.clone().unwrap_or_default()
}

#[test]
fn train_pods_carry_the_rendezvous_env() {
    let defaults = Defaults::default();
    let job = train_job("qwen-lora", base_spec());
    let kids = children(&job, &inputs(&defaults, 0)).unwrap();
    let c = container(&kids.job);
    for prefix in ["", "PET_"] {
        assert_eq!(value(c, &format!("{prefix}NNODES")), "2");
        assert_eq!(
            value(c, &format!("{prefix}MASTER_ADDR")),
            "qwen-lora-node-0.qwen-lora"
        );
        assert_eq!(value(c, &format!("{prefix}MASTER_PORT")), "29500");
        // numProcPerNode defaults to auto: the GPUs each node requests.
        assert_eq!(value(c, &format!("{prefix}NPROC_PER_NODE")), "4");
        let rank = env(c, &format!("{prefix}NODE_RANK"));
        assert_eq!(
            rank.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
    }
    let spec = kids.job.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.subdomain.as_deref(), Some("qwen-lora"));
    assert_eq!(kids.job.metadata.name.as_deref(), Some("qwen-lora-node"));
    // Storage credentials arrive as env from the Secret.
    assert_eq!(
        c.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "s3"
    );

    let svc = kids.service.spec.as_ref().unwrap();
    assert_eq!(kids.service.metadata.name.as_deref(), Some("qwen-lora"));
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    // Owner references make the children go with the job.
    let owner = &kids.job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("SwiftTrainJob", Some(true))
    );
}

#[test]
fn explicit_proc_counts_and_their_errors() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["numProcPerNode"] = json!(2);
    let kids = children(&train_job("j", spec.clone()), &inputs(&defaults, 0)).unwrap();
    assert_eq!(value(container(&kids.job), "NPROC_PER_NODE"), "2");
    spec["numProcPerNode"] = json!("all");
    let err = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap_err();
    assert!(err.to_string().starts_with("spec.numProcPerNode"), "{err}");
}

#[test]
fn every_start_resumes_from_the_output_root() {
    let defaults = Defaults::default();
    let job = train_job("j", base_spec());
    for attempt in [0, 1, 3] {
        let kids = children(&job, &inputs(&defaults, attempt)).unwrap();
        let args = container(&kids.job).args.clone().unwrap();
        assert_eq!(args[0], "sft");
        let i = args
            .iter()
            .position(|a| a == "--resume_from_checkpoint")
            .unwrap();
        assert_eq!(args[i + 1], "s3://ckpt/run");
        let i = args.iter().position(|a| a == "--output_dir").unwrap();
        assert_eq!(args[i + 1], "s3://ckpt/run");
        let labels = kids
            .job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["kubeswift.io/attempt"], attempt.to_string());
    }
    // Without an output root a restart could not resume: refused, naming the field.
    let mut spec = base_spec();
    spec["storage"]["output"] = Value::Null;
    let err = children(&train_job("j", spec.clone()), &inputs(&defaults, 0)).unwrap_err();
    assert!(err.to_string().starts_with("spec.storage.output"), "{err}");
    // args.output_dir works as the root too.
    spec["args"]["output_dir"] = json!("/mnt/out");
    let kids = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap();
    let args = container(&kids.job).args.clone().unwrap();
    let i = args
        .iter()
        .position(|a| a == "--resume_from_checkpoint")
        .unwrap();
    assert_eq!(args[i + 1], "/mnt/out");
}

#[test]
fn names_at_the_63_character_edge() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["numNodes"] = json!(1);
    let name = "a".repeat(56);
    let kids = children(&train_job(&name, spec.clone()), &inputs(&defaults, 0)).unwrap();
    assert_eq!(
        format!("{}-0", kids.job.metadata.name.as_deref().unwrap()).len(),
        63
    );
    let err = children(
        &train_job(&"a".repeat(57), spec.clone()),
        &inputs(&defaults, 0),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("metadata.name"), "{err}");
    spec["numNodes"] = json!(11);
    let err = children(&train_job(&name, spec.clone()), &inputs(&defaults, 0)).unwrap_err();
    assert!(err.to_string().contains("a-node-10"), "{err}");
    assert!(children(&train_job(&"a".repeat(55), spec), &inputs(&defaults, 0)).is_ok());
}

#[test]
fn invalid_args_name_the_field() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["args"]["lora_rnak"] = json!(8);
    let err = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap_err();
    assert!(matches!(err, BuildError::InvalidArgs(_)));
    assert_eq!(err.reason(), "InvalidArgs");
    assert!(err.to_string().contains("spec.args.lora_rnak"), "{err}");
    let mut spec = base_spec();
    spec["args"]["train_type"] = json!("boft");
    let err = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
    let mut spec = base_spec();
    spec["args"]["model"] = json!("other");
    let err = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.args.model is also set by spec.storage.model"),
        "{err}"
    );
}

#[test]
fn reserved_env_is_refused() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["env"] =
        json!([{"name": "HF_HOME", "value": "/c"}, {"name": "MASTER_ADDR", "value": "x"}]);
    let err = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap_err();
    assert!(err.to_string().starts_with("spec.env[1].name"), "{err}");
}

#[test]
fn suspend_and_kueue() {
    let defaults = Defaults::default();
    let suspend_of = |spec: Value, exists: bool| {
        let mut inp = inputs(&defaults, 0);
        inp.job_exists = exists;
        children(&train_job("j", spec), &inp)
            .unwrap()
            .job
            .spec
            .unwrap()
            .suspend
    };
    assert_eq!(suspend_of(base_spec(), false), Some(false));
    let mut held = base_spec();
    held["suspend"] = json!(true);
    assert_eq!(suspend_of(held.clone(), true), Some(true));
    let mut queued = base_spec();
    queued["scheduling"] = json!({"queueName": "team-a"});
    // Created suspended for Kueue to admit, then left to Kueue.
    assert_eq!(suspend_of(queued.clone(), false), Some(true));
    assert_eq!(suspend_of(queued.clone(), true), None);
    let kids = children(&train_job("j", queued), &inputs(&defaults, 0)).unwrap();
    assert_eq!(
        kids.job.metadata.labels.unwrap()["kueue.x-k8s.io/queue-name"],
        "team-a"
    );
    // suspend is not part of the spec hash: toggling it must not replace the Job.
    let a = children(&train_job("j", base_spec()), &inputs(&defaults, 0)).unwrap();
    let b = children(&train_job("j", held), &inputs(&defaults, 0)).unwrap();
    assert_eq!(a.job.metadata.annotations, b.job.metadata.annotations);
}

#[test]
fn gang_scheduling() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["scheduling"] = json!({"gang": "volcano", "queueName": "q"});
    let kids = children(&train_job("j", spec.clone()), &inputs(&defaults, 0)).unwrap();
    let pg = kids.pod_group.unwrap();
    assert_eq!(
        pg.types.as_ref().unwrap().api_version,
        "scheduling.volcano.sh/v1beta1"
    );
    assert_eq!(pg.data["spec"]["minMember"], 2);
    let template = &kids.job.spec.as_ref().unwrap().template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["scheduling.k8s.io/group-name"],
        "j"
    );
    assert_eq!(
        template.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("volcano")
    );

    spec["scheduling"] = json!({"gang": "coscheduling", "scheduleTimeoutSeconds": 60});
    let kids = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap();
    let pg = kids.pod_group.unwrap();
    assert_eq!(
        pg.types.as_ref().unwrap().api_version,
        "scheduling.x-k8s.io/v1alpha1"
    );
    assert_eq!(pg.data["spec"]["scheduleTimeoutSeconds"], 60);
    let template = &kids.job.spec.as_ref().unwrap().template;
    assert_eq!(
        template.metadata.as_ref().unwrap().labels.as_ref().unwrap()["scheduling.x-k8s.io/pod-group"],
        "j"
    );
    assert!(
        children(&train_job("j", base_spec()), &inputs(&defaults, 0))
            .unwrap()
            .pod_group
            .is_none()
    );
}

#[test]
fn a_failed_pod_fails_the_gang_and_usage_errors_are_final() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["failurePolicy"] = json!({"maxRestarts": 5, "failOnExitCodes": [2, 3]});
    let kids = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap();
    let spec = kids.job.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(
        spec.template.spec.unwrap().restart_policy.as_deref(),
        Some("Never")
    );
    let rules = spec.pod_failure_policy.unwrap().rules;
    assert_eq!(rules[0].action, "Ignore");
    assert_eq!(rules[1].action, "FailJob");
    assert_eq!(rules[1].on_exit_codes.as_ref().unwrap().values, vec![2, 3]);
}

/// Training pods get time to save the step they are on after SIGTERM, and the launcher in
/// the container is told how much (it cannot read its pod's spec).
#[test]
fn training_pods_get_a_termination_grace_and_know_it() {
    let defaults = Defaults::default();
    let grace = |spec: Value| {
        let kids = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap();
        let pod = kids
            .job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        (
            pod.termination_grace_period_seconds,
            value(container(&kids.job), "KUBESWIFT_TERMINATION_GRACE_SECONDS"),
        )
    };
    assert_eq!(grace(base_spec()), (Some(120), "120".to_string()));
    let mut spec = base_spec();
    spec["podTemplate"] = json!({"terminationGracePeriodSeconds": 900});
    assert_eq!(grace(spec), (Some(900), "900".to_string()));
}

#[test]
fn pod_template_patch_and_progress() {
    let defaults = Defaults::default();
    let mut spec = base_spec();
    spec["podTemplate"] = json!({
        "nodeSelector": {"gpu": "h100"}, "priorityClassName": "high",
        "labels": {"team": "a", "kubeswift.io/train-job": "hijack"},
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    });
    let kids = children(&train_job("j", spec), &inputs(&defaults, 0)).unwrap();
    let template = kids.job.spec.as_ref().unwrap().template.clone();
    let labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["team"], "a");
    // The selector label cannot be overridden.
    assert_eq!(labels["kubeswift.io/train-job"], "j");
    let pod = template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["gpu"], "h100");
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    let c = container(&kids.job);
    assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/cache");
    assert_eq!(value(c, "KUBESWIFT_PROGRESS_PORT"), "29400");
    let token = env(c, "KUBESWIFT_PROGRESS_TOKEN")
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(token.name, "j-progress");
    let secret = kids.progress_secret.unwrap();
    assert_eq!(secret.string_data.unwrap()["token"], "tok");
}

fn sample_job(name: &str, spec: Value) -> SwiftSampleJob {
    serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftSampleJob",
        "metadata": {"name": name, "namespace": "ml"}, "spec": spec,
    }))
    .unwrap()
}

#[test]
fn sample_shards() {
    let defaults = Defaults::default();
    let spec = json!({"shards": 4, "storage": {"model": "m", "dataset": ["d.jsonl"], "output": "s3://o"},
                      "args": {"num_return_sequences": 2}, "failurePolicy": {"backoffLimitPerIndex": 1}});
    let job = sample::job(&sample_job("s", spec.clone()), &defaults).unwrap();
    let spec_ = job.spec.as_ref().unwrap();
    assert_eq!((spec_.completions, spec_.parallelism), (Some(4), Some(4)));
    assert_eq!(spec_.backoff_limit_per_index, Some(1));
    assert_eq!(spec_.completion_mode.as_deref(), Some("Indexed"));
    let c = container(&job);
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "sample");
    assert_eq!(
        &args[args.len() - 3..],
        ["--data_range", "$(KUBESWIFT_SHARD_INDEX)", "4"]
    );
    assert!(env(c, "KUBESWIFT_SHARD_INDEX").value_from.is_some());
    // data_range is the operator's.
    let mut bad = spec.clone();
    bad["args"]["data_range"] = json!([0, 2]);
    let err = sample::job(&sample_job("s", bad), &defaults).unwrap_err();
    assert!(err.to_string().contains("spec.args.data_range"), "{err}");
    // Names at the edge: hostnames <name>-<shard>.
    let ok = sample::job(
        &sample_job(
            &"s".repeat(61),
            json!({"shards": 10, "storage": {"model": "m"}}),
        ),
        &defaults,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let long = sample::job(
        &sample_job(
            &"s".repeat(61),
            json!({"shards": 11, "storage": {"model": "m"}}),
        ),
        &defaults,
    );
    assert!(long.unwrap_err().to_string().starts_with("metadata.name"));
}

#[test]
fn deployment_serves_on_8000_with_probes_and_adapters() {
    let defaults = Defaults::default();
    let d: SwiftDeployment = serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftDeployment",
        "metadata": {"name": "chat", "namespace": "ml"},
        "spec": {"replicas": 2, "storage": {"model": "Qwen/Qwen2.5-0.5B"},
                 "adapters": [{"name": "mine", "uri": "pvc://ckpt/run/v0"}],
                 "probes": {"startupTimeoutSeconds": 600, "periodSeconds": 10},
                 "rollingUpdate": {"maxUnavailable": 0}},
    }))
    .unwrap();
    let kids = deploy::children(&d, &defaults).unwrap();
    let spec = kids.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "deploy");
    let i = args.iter().position(|a| a == "--adapters").unwrap();
    assert_eq!(args[i + 1], "mine=/mnt/pvc/ckpt/run/v0");
    let i = args.iter().position(|a| a == "--port").unwrap();
    assert_eq!(args[i + 1], "8000");
    let startup = c.startup_probe.as_ref().unwrap();
    assert_eq!(startup.failure_threshold, Some(60));
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/health")
    );
    assert_eq!(
        kids.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        8000
    );
    assert_eq!(deploy::url("chat", "ml"), "http://chat.ml.svc:8000/v1");
    let mut bad = d.clone();
    bad.spec.args.insert("port".into(), json!(9000));
    let err = deploy::children(&bad, &defaults).unwrap_err();
    assert!(err.to_string().contains("spec.args.port"), "{err}");
    let mut bad = d;
    bad.metadata = ObjectMeta {
        name: Some("Chat".into()),
        ..Default::default()
    };
    assert!(deploy::children(&bad, &defaults).is_err());
}
