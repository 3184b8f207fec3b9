//! Every CEL rule of the three CRDs, evaluated client-side by kube's CEL engine (kube-cel)
//! against the finished CRD schema, exactly as the apiserver would see the object (schema
//! defaults applied first). Each rule has a passing and a failing case.

use kube::core::cel::{
    ErrorKind, ScopeContext, Validator, WarningKind, analyze_rule, compile_schema,
};
use kubeswift_crds::{crds, schema::openapi_schema};
use serde_json::{Value, json};

fn schema(kind: &str) -> Value {
    let crd = crds()
        .unwrap()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    openapi_schema(&crd).unwrap()
}

/// The messages of the rules `obj` breaks (empty when it passes).
fn broken(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(kind), obj, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| {
                // A rule that cannot be evaluated is a bug in the rule, not a refusal.
                assert_eq!(e.kind, ErrorKind::ValidationFailure, "{e:?}");
                e.to_string()
            })
            .collect(),
    }
}

fn train(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kubeswift.io/v1alpha1",
        "kind": "SwiftTrainJob",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": spec,
    })
}

fn assert_refused(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errors:?}"
    );
}

#[test]
fn a_plain_train_job_passes() {
    let job = train(
        "qwen-lora",
        json!({"args": {"model": "Qwen/Qwen2.5-0.5B", "lora_rank": 8}, "numNodes": 2,
               "numProcPerNode": "auto", "env": [{"name": "HF_HOME", "value": "/cache"}]}),
    );
    assert_eq!(broken("SwiftTrainJob", &job, None), Vec::<String>::new());
}

#[test]
fn train_names_must_be_dns_labels() {
    for bad in ["Qwen", "1qwen", "qwen.lora", "qwen-"] {
        let errors = broken("SwiftTrainJob", &train(bad, json!({})), None);
        assert_refused(&errors, "DNS-1035");
    }
}

#[test]
fn train_names_leave_room_for_the_longest_hostname() {
    // One node: <name>-node-0 is 63 characters at a 56-character name.
    let ok = train(&"a".repeat(56), json!({"numNodes": 1}));
    assert_eq!(broken("SwiftTrainJob", &ok, None), Vec::<String>::new());
    let long = train(&"a".repeat(57), json!({"numNodes": 1}));
    assert_refused(&broken("SwiftTrainJob", &long, None), "too long");
    // Eleven nodes: the last hostname ends in -node-10, one character more.
    let ok = train(&"a".repeat(55), json!({"numNodes": 11}));
    assert_eq!(broken("SwiftTrainJob", &ok, None), Vec::<String>::new());
    let long = train(&"a".repeat(56), json!({"numNodes": 11}));
    assert_refused(&broken("SwiftTrainJob", &long, None), "too long");
    // The default numNodes (1) is applied before the rule runs.
    let defaulted = train(&"a".repeat(57), json!({}));
    assert_refused(&broken("SwiftTrainJob", &defaulted, None), "too long");
}

#[test]
fn num_nodes_must_be_positive() {
    let errors = broken("SwiftTrainJob", &train("j", json!({"numNodes": 0})), None);
    assert_refused(&errors, "numNodes must be at least 1");
}

#[test]
fn num_proc_per_node_is_a_number_or_auto() {
    for ok in [json!(8), json!("auto")] {
        let job = train("j", json!({"numProcPerNode": ok}));
        assert_eq!(broken("SwiftTrainJob", &job, None), Vec::<String>::new());
    }
    for bad in [json!(0), json!("all")] {
        let job = train("j", json!({"numProcPerNode": bad}));
        assert_refused(&broken("SwiftTrainJob", &job, None), "numProcPerNode");
    }
}

#[test]
fn rendezvous_env_names_are_reserved() {
    for reserved in [
        "MASTER_ADDR",
        "NODE_RANK",
        "PET_NNODES",
        "KUBESWIFT_PROGRESS_TOKEN",
    ] {
        let job = train(
            "j",
            json!({"env": [{"name": "A", "value": "1"}, {"name": reserved, "value": "x"}]}),
        );
        assert_refused(&broken("SwiftTrainJob", &job, None), "set by the operator");
    }
}

fn started(mut job: Value) -> Value {
    job["status"] = json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z"});
    job
}

fn with_spec(job: &Value, key: &str, value: Value) -> Value {
    let mut job = job.clone();
    job["spec"][key] = value;
    job
}

#[test]
fn a_started_job_keeps_its_spec() {
    let old = started(train("j", json!({"args": {"lora_rank": 8}, "numNodes": 2})));
    let new = with_spec(&old, "args", json!({"lora_rank": 16}));
    assert_refused(
        &broken("SwiftTrainJob", &new, Some(&old)),
        "spec.args cannot change",
    );
    let new = with_spec(&old, "numNodes", json!(4));
    assert_refused(
        &broken("SwiftTrainJob", &new, Some(&old)),
        "spec.numNodes cannot change",
    );
    // Adding a field that was absent is a change too.
    let new = with_spec(&old, "image", json!("other:1"));
    assert_refused(
        &broken("SwiftTrainJob", &new, Some(&old)),
        "spec.image cannot change",
    );
    // suspend and the TTL always may.
    let new = with_spec(&old, "suspend", json!(true));
    let new = with_spec(&new, "ttlSecondsAfterFinished", json!(60));
    assert_eq!(
        broken("SwiftTrainJob", &new, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn scheduling_fields_change_only_while_suspended() {
    let running = started(train("j", json!({"scheduling": {"queueName": "a"}})));
    let moved = with_spec(&running, "scheduling", json!({"queueName": "b"}));
    assert_refused(
        &broken("SwiftTrainJob", &moved, Some(&running)),
        "spec.scheduling can change only while the job is suspended",
    );
    let pinned = with_spec(
        &running,
        "podTemplate",
        json!({"nodeSelector": {"gpu": "h100"}}),
    );
    assert_refused(
        &broken("SwiftTrainJob", &pinned, Some(&running)),
        "spec.podTemplate",
    );

    // Kueue's admission: one update sets the node selector and clears suspend.
    let suspended = train(
        "j",
        json!({"suspend": true, "scheduling": {"queueName": "a"}}),
    );
    let admitted = with_spec(
        &suspended,
        "podTemplate",
        json!({"nodeSelector": {"gpu": "h100"}}),
    );
    let admitted = with_spec(&admitted, "suspend", json!(false));
    assert_eq!(
        broken("SwiftTrainJob", &admitted, Some(&suspended)),
        Vec::<String>::new()
    );
}

#[test]
fn a_suspended_job_that_never_ran_may_be_edited() {
    let suspended = train("j", json!({"suspend": true, "args": {"lora_rank": 8}}));
    let edited = with_spec(&suspended, "args", json!({"lora_rank": 16}));
    assert_eq!(
        broken("SwiftTrainJob", &edited, Some(&suspended)),
        Vec::<String>::new()
    );
    // Once it has run, suspending it does not unfreeze the spec.
    let paused = started(suspended.clone());
    let edited = with_spec(&paused, "args", json!({"lora_rank": 16}));
    assert_refused(
        &broken("SwiftTrainJob", &edited, Some(&paused)),
        "spec.args cannot change",
    );
    // An unsuspended job that has not started yet is live (its pods are pending).
    let live = train("j", json!({"args": {"lora_rank": 8}}));
    let edited = with_spec(&live, "args", json!({"lora_rank": 16}));
    assert_refused(
        &broken("SwiftTrainJob", &edited, Some(&live)),
        "spec.args cannot change",
    );
}

fn sample(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftSampleJob",
           "metadata": {"name": name}, "spec": spec})
}

#[test]
fn sample_rules() {
    let ok = sample(&"s".repeat(60), json!({"shards": 100}));
    assert_eq!(broken("SwiftSampleJob", &ok, None), Vec::<String>::new());
    let long = sample(&"s".repeat(61), json!({"shards": 100}));
    assert_refused(&broken("SwiftSampleJob", &long, None), "too long");
    let zero = sample("s", json!({"shards": 0}));
    assert_refused(
        &broken("SwiftSampleJob", &zero, None),
        "shards must be at least 1",
    );
    let old = started(sample("s", json!({"shards": 4})));
    let new = with_spec(&old, "shards", json!(8));
    assert_refused(
        &broken("SwiftSampleJob", &new, Some(&old)),
        "spec.shards cannot change",
    );
    assert_refused(
        &broken("SwiftSampleJob", &sample("S", json!({})), None),
        "DNS-1035",
    );
}

fn deployment(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kubeswift.io/v1alpha1", "kind": "SwiftDeployment",
           "metadata": {"name": name}, "spec": spec})
}

#[test]
fn deployment_rules() {
    let ok = deployment(
        &"d".repeat(63),
        json!({"adapters": [{"name": "a", "uri": "s3://b/a"}]}),
    );
    assert_eq!(broken("SwiftDeployment", &ok, None), Vec::<String>::new());
    let long = deployment(&"d".repeat(64), json!({}));
    assert_refused(&broken("SwiftDeployment", &long, None), "at most 63");
    // Adapter names are unique through a list-map the apiserver enforces.
    let adapters = &schema("SwiftDeployment")["properties"]["spec"]["properties"]["adapters"];
    assert_eq!(adapters["x-kubernetes-list-type"], "map");
    assert_eq!(adapters["x-kubernetes-list-map-keys"], json!(["name"]));
    // Deployments roll: their spec may change.
    let old = deployment("d", json!({"replicas": 1}));
    let new = deployment("d", json!({"replicas": 3, "args": {"max_batch_size": 8}}));
    assert_eq!(
        broken("SwiftDeployment", &new, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn rules_stay_in_scope_and_within_the_cost_budget() {
    for crd in crds().unwrap() {
        let schema = openapi_schema(&crd).unwrap();
        let compiled = compile_schema(&schema);
        let mut rules = vec![];
        collect_rules(&schema, &mut rules);
        assert!(!rules.is_empty());
        for rule in rules {
            // kube-cel's scope check does not know comprehension variables (`e` in
            // `self.all(e, ...)`): those are not scope errors.
            let bound: Vec<String> = ["all", "exists", "exists_one", "map", "filter"]
                .iter()
                .flat_map(|m| {
                    let pattern = format!(".{m}(");
                    rule.match_indices(&pattern)
                        .map(|(i, _)| i + pattern.len())
                        .collect::<Vec<_>>()
                })
                .filter_map(|start| {
                    rule[start..]
                        .split(',')
                        .next()
                        .map(|v| v.trim().to_string())
                })
                .collect();
            for w in analyze_rule(&rule, &compiled, ScopeContext::CrdValidation) {
                if w.kind == WarningKind::WrongScope
                    && bound
                        .iter()
                        .any(|v| w.message.contains(&format!("variable '{v}'")))
                {
                    continue;
                }
                assert!(
                    !matches!(w.kind, WarningKind::WrongScope | WarningKind::CostExceeded),
                    "{}: {w:?}",
                    crd.spec.names.kind
                );
            }
        }
    }
}

fn collect_rules(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["rule"].as_str().map(String::from)),
                );
            }
            map.values().for_each(|v| collect_rules(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}

#[test]
fn args_schema_comes_from_the_argument_table() {
    let train = schema("SwiftTrainJob");
    let args = &train["properties"]["spec"]["properties"]["args"];
    assert_eq!(args["type"], "object");
    assert_eq!(args["properties"]["lora_rank"]["type"], "integer");
    assert_eq!(args["properties"]["dataset"]["type"], "array");
    // No catch-all: kubectl's field validation refuses names that are not listed.
    assert!(args["properties"].get("lora_rnak").is_none());
    assert!(args.get("x-kubernetes-preserve-unknown-fields").is_none());
    // Deploy and sample carry their own command's arguments.
    let deploy = schema("SwiftDeployment");
    assert!(deploy["properties"]["spec"]["properties"]["args"]["properties"]["port"].is_object());
    let sample = schema("SwiftSampleJob");
    assert!(
        sample["properties"]["spec"]["properties"]["args"]["properties"]["data_range"].is_object()
    );
}
