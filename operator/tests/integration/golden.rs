//! Golden tests: `swift-operator render` of every example, and the chart's copy of the CRDs,
//! compared with committed files. After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p kubeswift-operator --test integration golden::` and review the diff.

use std::path::{Path, PathBuf};

use kubeswift_operator::build::Defaults;
use kubeswift_operator::render::render;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(expected_path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", expected_path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the generated output at line {}:\n  committed: {:?}\n  generated: {:?}\n\
             regenerate with UPDATE_GOLDEN=1 and review the diff",
            expected_path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn examples_render_to_their_golden_children() {
    for example in ["train-lora", "deploy-qwen", "sample-qwen"] {
        let text =
            std::fs::read_to_string(root().join(format!("examples/{example}.yaml"))).unwrap();
        let out = render(&text, &Defaults::default()).unwrap();
        check(
            &root().join(format!("operator/tests/integration/golden/{example}.yaml")),
            &out,
        );
    }
}

#[test]
fn the_charts_crds_are_generated() {
    let yaml = kubeswift_crds::crds_yaml().unwrap();
    check(
        &root().join("charts/kubeswift/crds/kubeswift.io.yaml"),
        &yaml,
    );
}

#[test]
fn train_lora_renders_a_service_and_an_indexed_job_with_rendezvous_env() {
    let text = std::fs::read_to_string(root().join("examples/train-lora.yaml")).unwrap();
    let out = render(&text, &Defaults::default()).unwrap();
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Job"]);
    assert_eq!(docs[1]["spec"]["completionMode"], "Indexed");
    let env = &docs[1]["spec"]["template"]["spec"]["containers"][0]["env"];
    let get = |n: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(get("MASTER_ADDR")["value"], "qwen-lora-node-0.qwen-lora");
    assert_eq!(get("NNODES")["value"], "2");
}

#[test]
fn render_names_the_bad_document_and_field() {
    let text = "apiVersion: kubeswift.io/v1alpha1\nkind: SwiftTrainJob\nmetadata: {name: j}\n\
                spec: {storage: {output: /o}, args: {lora_rnak: 8}}\n";
    let err = render(text, &Defaults::default()).unwrap_err().to_string();
    assert!(err.contains("document 1 (SwiftTrainJob j)"), "{err}");
    assert!(err.contains("spec.args.lora_rnak"), "{err}");
    let err = render("kind: Pod\n", &Defaults::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a kubeswift.io resource"), "{err}");
}
