//! The real kube-runtime controllers against the stateful API emulator: the tests create
//! resources, play the missing Job controller and kubelet by writing Job and Pod status, and
//! assert children, env, conditions, restarts with resume, suspend, deadlines, TTL deletion.

use crate::common;

use std::sync::Arc;

use common::{FakeProgress, client, eventually, namespace, start_operator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubeswift_crds::common::find_condition;
use kubeswift_crds::{Phase, ProgressReport, SwiftDeployment, SwiftSampleJob, SwiftTrainJob};
use serde_json::{Value, json};

fn train(name: &str, spec: Value) -> SwiftTrainJob {
    serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftTrainJob",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn spec(extra: Value) -> Value {
    let mut s = json!({
        "numNodes": 2,
        "storage": {"model": "Qwen/Qwen2.5-0.5B", "dataset": ["s3://d/a.jsonl"], "output": "s3://ckpt/run"},
        "args": {"train_type": "lora", "lora_rank": 8},
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut s, extra) {
        s.extend(e);
    }
    s
}

/// Plays the Job controller: writes `status` of a Job.
async fn job_status(jobs: &Api<Job>, name: &str, status: Value) {
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
}

/// Plays the kubelet: a pod of `job` at `index` whose `swift` container ended.
async fn finished_pod(
    pods: &Api<Pod>,
    job: &str,
    index: u32,
    exit_code: i32,
    message: &str,
) -> String {
    let name = format!("{job}-node-{index}-x{index}");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubeswift.io/train-job": job, "batch.kubernetes.io/job-completion-index": index.to_string()}},
        "spec": {"containers": [{"name": "swift", "image": "i"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "swift", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    name
}

async fn phase_of(
    api: &Api<SwiftTrainJob>,
    name: &str,
) -> Option<(Phase, kubeswift_crds::SwiftTrainJobStatus)> {
    let job = api.get_opt(name).await.unwrap()?;
    let status = job.status?;
    Some((status.phase?, status))
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].as_str())
}

fn container_args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
}

#[tokio::test]
async fn a_training_job_runs_restarts_resumes_succeeds_and_expires() {
    let ns = namespace("lifecycle");
    let client = client(&ns).await;
    let progress = Arc::new(FakeProgress::default());
    let _op = start_operator(client.clone(), &ns, progress.clone());
    let trains: Api<SwiftTrainJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let spec = spec(json!({"failurePolicy": {"maxRestarts": 1}, "ttlSecondsAfterFinished": 1}));
    trains
        .create(&PostParams::default(), &train("llm", spec))
        .await
        .unwrap();

    // Children: the headless Service and the gang's Indexed Job, with rendezvous env.
    let job = eventually(20, "the Job", || async {
        jobs.get_opt("llm-node").await.unwrap()
    })
    .await;
    let svc = services.get("llm").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let c = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let env = |n: &str| {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == n)
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(env("MASTER_ADDR").as_deref(), Some("llm-node-0.llm"));
    assert_eq!(env("PET_NNODES").as_deref(), Some("2"));
    assert_eq!(
        arg_after(&container_args(&job), "--resume_from_checkpoint"),
        Some("s3://ckpt/run")
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "SwiftTrainJob");

    // Pods run: Running, with progress from rank 0.
    *progress.report.lock().unwrap() = Some(ProgressReport {
        version: 1,
        step: 5,
        total_steps: Some(10),
        loss: Some(1.5),
        ..Default::default()
    });
    job_status(
        &jobs,
        "llm-node",
        json!({"active": 2, "startTime": "2026-01-01T00:00:00Z"}),
    )
    .await;
    let (_, status) = eventually(20, "Running with progress", || async {
        phase_of(&trains, "llm")
            .await
            .filter(|(p, s)| *p == Phase::Running && s.progress.is_some())
    })
    .await;
    assert_eq!(status.progress.unwrap().summary, "5/10 (50%)");
    assert!(status.start_time.is_some());
    let asked = progress.asked.lock().unwrap()[0].clone();
    assert_eq!(
        (asked.namespace.as_str(), asked.job.as_str()),
        (ns.as_str(), "llm")
    );
    assert_eq!(asked.token.len(), 64);

    // The gang fails: restarted whole (a new Job, attempt 1), resuming from the output root.
    let old_uid = job.metadata.uid.clone();
    job_status(&jobs, "llm-node", json!({"active": 0, "failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})).await;
    let restarted = eventually(20, "the restarted Job", || async {
        jobs.get_opt("llm-node")
            .await
            .unwrap()
            .filter(|j| j.metadata.uid != old_uid)
    })
    .await;
    assert_eq!(
        restarted.metadata.labels.as_ref().unwrap()["kubeswift.io/attempt"],
        "1"
    );
    assert_eq!(
        arg_after(&container_args(&restarted), "--resume_from_checkpoint"),
        Some("s3://ckpt/run")
    );
    let (phase, status) = phase_of(&trains, "llm").await.unwrap();
    assert_eq!(status.restarts, 1);
    assert!(
        matches!(phase, Phase::Restarting | Phase::Pending),
        "{phase:?}"
    );
    assert!(find_condition(&status.conditions, "Restarting").is_some());

    // It succeeds; node 0's termination message carries the final report.
    finished_pod(
        &pods,
        "llm",
        0,
        0,
        r#"{"version":1,"step":10,"total_steps":10,"loss":0.9,"finished":true}"#,
    )
    .await;
    job_status(&jobs, "llm-node", json!({"active": 0, "succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]})).await;
    let (_, status) = eventually(20, "Succeeded", || async {
        phase_of(&trains, "llm")
            .await
            .filter(|(p, _)| *p == Phase::Succeeded)
    })
    .await;
    let progress = status.progress.unwrap();
    assert_eq!((progress.step, progress.loss), (10, Some(0.9)));
    let succeeded = find_condition(&status.conditions, "Succeeded").unwrap();
    assert_eq!(
        (succeeded.status.as_str(), succeeded.observed_generation),
        ("True", Some(1))
    );

    // TTL: the job and (through owner references) its children are deleted.
    eventually(20, "TTL deletion", || async {
        trains.get_opt("llm").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually(20, "children collected", || async {
        (jobs.get_opt("llm-node").await.unwrap().is_none()
            && services.get_opt("llm").await.unwrap().is_none())
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn invalid_args_fail_once_with_the_field_named() {
    let ns = namespace("invalid");
    let client = client(&ns).await;
    let op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let trains: Api<SwiftTrainJob> = Api::namespaced(client.clone(), &ns);
    let mut s = spec(json!({}));
    s["args"]["lora_rnak"] = json!(8);
    trains
        .create(&PostParams::default(), &train("typo", s))
        .await
        .unwrap();
    let (_, status) = eventually(20, "Failed", || async {
        phase_of(&trains, "typo")
            .await
            .filter(|(p, _)| *p == Phase::Failed)
    })
    .await;
    let failed = find_condition(&status.conditions, "Failed").unwrap();
    assert_eq!(failed.reason, "InvalidArgs");
    assert!(
        failed.message.contains("spec.args.lora_rnak"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("did you mean '--lora_rank'"),
        "{}",
        failed.message
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs.get_opt("typo-node").await.unwrap().is_none());
    // A Warning event says why.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let found = eventually(10, "the event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidArgs"))
    })
    .await;
    assert_eq!(found.type_.as_deref(), Some("Warning"));
    // No retry loop: a few seconds later the controller has not kept reconciling.
    let before = op.metrics.encode();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(reconciles(&before), reconciles(&op.metrics.encode()));
}

fn reconciles(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("kubeswift_reconciles_total{controller=\"train\"}"))
        .collect()
}

#[tokio::test]
async fn suspend_is_propagated_to_the_job() {
    let ns = namespace("suspend");
    let client = client(&ns).await;
    let _op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let trains: Api<SwiftTrainJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    trains
        .create(
            &PostParams::default(),
            &train("held", spec(json!({"suspend": true}))),
        )
        .await
        .unwrap();
    let job = eventually(20, "the Job", || async {
        jobs.get_opt("held-node").await.unwrap()
    })
    .await;
    assert_eq!(job.spec.unwrap().suspend, Some(true));
    eventually(20, "Suspended", || async {
        phase_of(&trains, "held").await.filter(|(p, s)| {
            *p == Phase::Suspended && find_condition(&s.conditions, "Suspended").is_some()
        })
    })
    .await;
    trains
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    eventually(20, "the Job unsuspended", || async {
        jobs.get_opt("held-node")
            .await
            .unwrap()
            .filter(|j| j.spec.as_ref().unwrap().suspend == Some(false))
    })
    .await;
}

#[tokio::test]
async fn an_exit_code_in_fail_on_exit_codes_fails_at_once_naming_the_pod() {
    let ns = namespace("exitcode");
    let client = client(&ns).await;
    let _op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let trains: Api<SwiftTrainJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    trains
        .create(&PostParams::default(), &train("bad", spec(json!({}))))
        .await
        .unwrap();
    eventually(20, "the Job", || async {
        jobs.get_opt("bad-node").await.unwrap()
    })
    .await;
    let pod = finished_pod(&pods, "bad", 1, 2, "error: unknown argument").await;
    job_status(&jobs, "bad-node", json!({"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "Container swift for pod exited with code 2"}]})).await;
    let (_, status) = eventually(20, "Failed", || async {
        phase_of(&trains, "bad")
            .await
            .filter(|(p, _)| *p == Phase::Failed)
    })
    .await;
    let failed = find_condition(&status.conditions, "Failed").unwrap();
    assert_eq!(failed.reason, "ExitCode");
    assert!(
        failed.message.contains(&pod) && failed.message.contains("code 2"),
        "{}",
        failed.message
    );
    assert_eq!(status.restarts, 0);
}

#[tokio::test]
async fn the_deadline_counts_from_the_first_start() {
    let ns = namespace("deadline");
    let client = client(&ns).await;
    let _op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let trains: Api<SwiftTrainJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    trains
        .create(
            &PostParams::default(),
            &train("slow", spec(json!({"activeDeadlineSeconds": 2}))),
        )
        .await
        .unwrap();
    eventually(20, "the Job", || async {
        jobs.get_opt("slow-node").await.unwrap()
    })
    .await;
    job_status(&jobs, "slow-node", json!({"active": 2})).await;
    let (_, status) = eventually(20, "DeadlineExceeded", || async {
        phase_of(&trains, "slow")
            .await
            .filter(|(p, _)| *p == Phase::Failed)
    })
    .await;
    assert_eq!(
        find_condition(&status.conditions, "Failed").unwrap().reason,
        "DeadlineExceeded"
    );
    eventually(20, "the Job deleted", || async {
        jobs.get_opt("slow-node")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_sample_job_runs_one_index_per_shard() {
    let ns = namespace("sample");
    let client = client(&ns).await;
    let _op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let samples: Api<SwiftSampleJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let s: SwiftSampleJob = serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftSampleJob", "metadata": {"name": "rft"},
        "spec": {"shards": 3, "storage": {"model": "m", "dataset": ["d.jsonl"], "output": "s3://o"}},
    }))
    .unwrap();
    samples.create(&PostParams::default(), &s).await.unwrap();
    let job = eventually(20, "the Job", || async {
        jobs.get_opt("rft").await.unwrap()
    })
    .await;
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(
        (spec.completions, spec.completion_mode.as_deref()),
        (Some(3), Some("Indexed"))
    );
    let args = container_args(&job);
    assert_eq!(
        &args[args.len() - 3..],
        ["--data_range", "$(KUBESWIFT_SHARD_INDEX)", "3"]
    );
    job_status(
        &jobs,
        "rft",
        json!({"succeeded": 3, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
    let status = eventually(20, "Succeeded", || async {
        samples
            .get("rft")
            .await
            .unwrap()
            .status
            .filter(|s| s.phase == Some(Phase::Succeeded))
    })
    .await;
    assert_eq!(status.shards_done.as_deref(), Some("3/3"));
}

#[tokio::test]
async fn a_deployment_reports_replicas_and_url() {
    let ns = namespace("deploy");
    let client = client(&ns).await;
    let _op = start_operator(client.clone(), &ns, Arc::new(FakeProgress::default()));
    let deploys: Api<SwiftDeployment> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d: SwiftDeployment = serde_json::from_value(json!({
        "apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftDeployment", "metadata": {"name": "chat"},
        "spec": {"replicas": 2, "storage": {"model": "Qwen/Qwen2.5-0.5B"}},
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    eventually(20, "the Deployment", || async {
        deployments.get_opt("chat").await.unwrap()
    })
    .await;
    deployments
        .patch_status(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"replicas": 2, "readyReplicas": 2}})),
        )
        .await
        .unwrap();
    let status = eventually(20, "ready replicas", || async {
        deploys
            .get("chat")
            .await
            .unwrap()
            .status
            .filter(|s| s.ready_replicas == 2)
    })
    .await;
    assert_eq!(status.url, Some(format!("http://chat.{ns}.svc:8000/v1")));
    assert_eq!(
        find_condition(&status.conditions, "Available")
            .unwrap()
            .status,
        "True"
    );
}

#[tokio::test]
async fn kubectl_applies_the_examples() {
    let kubectl = common::root().join(".cache/tools/bin/kubectl");
    assert!(
        kubectl.exists(),
        "kubectl missing: run scripts/tools (scripts/test does)"
    );
    let ns = "default";
    let client = client(ns).await;
    let _op = start_operator(client.clone(), ns, Arc::new(FakeProgress::default()));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: e, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: e, user: u, namespace: default}}}}]\n\
             current-context: c\n",
            common::url()
        ),
    )
    .unwrap();
    // The emulator has no OpenAPI document, so kubectl's client-side schema check is off;
    // the same files are schema-checked by the CEL/CRD tests.
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--server-side", "--validate=false", "-f"])
        .arg(common::root().join("examples"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "swifttrainjob.kubeswift.io/qwen-lora",
        "swiftdeployment.kubeswift.io/qwen-chat",
        "swiftsamplejob.kubeswift.io/qwen-sample",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(20, "the operator's children of the examples", || async {
        let train = jobs.get_opt("qwen-lora-node").await.unwrap();
        let sample = jobs.get_opt("qwen-sample").await.unwrap();
        let deploy = deployments.get_opt("qwen-chat").await.unwrap();
        (train.is_some() && sample.is_some() && deploy.is_some()).then_some(())
    })
    .await;
    let get = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "get",
            "swifttrainjobs",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout), "qwen-lora");
}
