//! `swift infer` with its model, adapter, dataset and result file in a bucket, against the
//! real S3 server that scripts/test starts: the same results as the run on local disk, and
//! a missing remote model is one clear error naming the argument and the URI.

use crate::storage_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use object_store::ObjectStoreExt;
use serde_json::Value;
use storage_support::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn swift(args: &[String], cache: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args(args)
        .env("SWIFT_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .env("MODELSCOPE_CACHE", cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn infer_args(model: &str, adapter: &str, data: &str, result: &str) -> Vec<String> {
    [
        "infer",
        "--model",
        model,
        "--adapters",
        adapter,
        "--val_dataset",
        data,
        "--max_new_tokens",
        "6",
        "--temperature",
        "0",
        "--result_path",
        result,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn upload_folder(local: &Path, remote: &kubeswift_runtime::storage::Remote) {
    for entry in std::fs::read_dir(local).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            put(remote, &name, std::fs::read(&path).unwrap()).await;
        }
    }
}

/// The object at `uri` as text.
async fn read_text(uri: &str) -> String {
    let remote = open(uri);
    let bytes = remote
        .store
        .get(&remote.location.object_path())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn responses(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["response"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_from_and_into_the_bucket_matches_local_disk() {
    let Some(bucket) = bucket() else { return };
    let base = unique_uri(&bucket, "infer-bucket");
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let data = s.join("val.jsonl");
    std::fs::write(
        &data,
        [
            r#"{"query": "What is the capital of France?", "response": "Paris"}"#,
            r#"{"query": "Hello, world!"}"#,
            r#"{"query": "1 + 1 = 2"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let model = fixture("models/tiny-Qwen2.5");
    let adapter = fixture("training/adapter");
    upload_folder(&model, &open(&format!("{base}/models/tiny-Qwen2.5"))).await;
    upload_folder(&adapter, &open(&format!("{base}/adapters/a"))).await;
    put(
        &open(&format!("{base}/data")),
        "val.jsonl",
        std::fs::read(&data).unwrap(),
    )
    .await;

    let local_result = s.join("local.jsonl");
    let (code, _, stderr) = swift(
        &infer_args(
            &model.display().to_string(),
            &adapter.display().to_string(),
            &data.display().to_string(),
            &local_result.display().to_string(),
        ),
        &s.join("cache"),
    );
    assert_eq!(code, 0, "{stderr}");
    let local = std::fs::read_to_string(&local_result).unwrap();

    let result_uri = format!("{base}/results/out.jsonl");
    let (code, stdout, stderr) = swift(
        &infer_args(
            &format!("{base}/models/tiny-Qwen2.5"),
            &format!("{base}/adapters/a"),
            &format!("{base}/data/val.jsonl"),
            &result_uri,
        ),
        &s.join("cache"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&result_uri), "{stdout}");
    let uploaded = read_text(&result_uri).await;
    assert_eq!(responses(&uploaded).len(), 3);
    assert_eq!(responses(&uploaded), responses(&local));

    // A second run replaces the object rather than appending to it.
    let (code, _, stderr) = swift(
        &infer_args(
            &format!("{base}/models/tiny-Qwen2.5"),
            &format!("{base}/adapters/a"),
            &format!("{base}/data/val.jsonl"),
            &result_uri,
        ),
        &s.join("cache"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(responses(&read_text(&result_uri).await).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_remote_model_is_one_error_naming_it() {
    let Some(bucket) = bucket() else { return };
    let missing = format!(
        "{}/models/nothing-here",
        unique_uri(&bucket, "infer-missing")
    );
    let scratch = tempfile::tempdir().unwrap();
    let (code, _, stderr) = swift(
        &[
            "infer".to_string(),
            "--model".to_string(),
            missing.clone(),
            "--val_dataset".to_string(),
            "x.jsonl".to_string(),
        ],
        &scratch.path().join("cache"),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--model") && stderr.contains(&missing),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `swift deploy` with the model and a named adapter in the bucket (a SwiftDeployment's
/// usual arguments): it serves them under the names the user gave, and the adapter answers
/// as it does from local disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_serves_a_model_and_a_named_adapter_from_the_bucket() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let Some(bucket) = bucket() else { return };
    let base = unique_uri(&bucket, "deploy-bucket");
    let model = fixture("models/tiny-Qwen2.5");
    let adapter = fixture("training/adapter");
    upload_folder(&model, &open(&format!("{base}/models/tiny-Qwen2.5"))).await;
    upload_folder(&adapter, &open(&format!("{base}/adapters/a"))).await;
    let scratch = tempfile::tempdir().unwrap();
    let spawn = |model: String, adapter: String| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_swift"))
            .args(["deploy", "--model", &model, "--adapters", &adapter])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .env("SWIFT_LOG", "warn")
            .env("RAYON_NUM_THREADS", "1")
            .env("MODELSCOPE_CACHE", scratch.path().join("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(url.starts_with("http://"), "{line:?}");
        (child, url)
    };
    let ask = |url: String| async move {
        let client = reqwest::Client::new();
        let models: Value = client
            .get(format!("{url}/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut ids: Vec<String> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        let body = serde_json::json!({
            "model": "a",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 6,
            "temperature": 0
        });
        let answer: Value = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_string();
        (ids, text)
    };
    let (mut remote, url) = spawn(
        format!("{base}/models/tiny-Qwen2.5"),
        format!("a={base}/adapters/a"),
    );
    let (ids, remote_text) = ask(url).await;
    let _ = remote.kill();
    let _ = remote.wait();
    assert_eq!(ids, ["a", "tiny-Qwen2.5"]);
    let (mut local, url) = spawn(
        model.display().to_string(),
        format!("a={}", adapter.display()),
    );
    let (_, local_text) = ask(url).await;
    let _ = local.kill();
    let _ = local.wait();
    assert_eq!(remote_text, local_text);
}

/// `swift export --merge_lora` with the base model and the adapter in the bucket writes the
/// same merged weights as from local disk; a bucket `--output_dir` is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_merges_a_model_and_adapter_from_the_bucket() {
    let Some(bucket) = bucket() else { return };
    let base = unique_uri(&bucket, "export-bucket");
    let model = fixture("models/tiny-Qwen2.5");
    let adapter = fixture("training/adapter");
    upload_folder(&model, &open(&format!("{base}/models/tiny-Qwen2.5"))).await;
    upload_folder(&adapter, &open(&format!("{base}/adapters/a"))).await;
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let export = |model: String, adapter: String, out: String| {
        swift(
            &[
                "export".to_string(),
                "--model".to_string(),
                model,
                "--adapters".to_string(),
                adapter,
                "--merge_lora".to_string(),
                "true".to_string(),
                "--output_dir".to_string(),
                out,
            ],
            &s.join("cache"),
        )
    };
    let local_out = s.join("local-merged");
    let (code, _, stderr) = export(
        model.display().to_string(),
        adapter.display().to_string(),
        local_out.display().to_string(),
    );
    assert_eq!(code, 0, "{stderr}");
    let remote_out = s.join("remote-merged");
    let (code, _, stderr) = export(
        format!("{base}/models/tiny-Qwen2.5"),
        format!("{base}/adapters/a"),
        remote_out.display().to_string(),
    );
    assert_eq!(code, 0, "{stderr}");
    let weights = |dir: &Path| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(!weights(&local_out).is_empty());
    assert!(
        weights(&local_out) == weights(&remote_out),
        "merged weights differ"
    );

    let bucket_out = format!("{base}/merged");
    let (code, _, stderr) = export(
        format!("{base}/models/tiny-Qwen2.5"),
        format!("{base}/adapters/a"),
        bucket_out.clone(),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--output_dir") && stderr.contains(&bucket_out),
        "{stderr}"
    );
}

/// `--adapters` may name a training job's output in the bucket (a SwiftDeployment's adapter
/// URI is the SwiftTrainJob's `storage.output`): the newest complete checkpoint under it is
/// served, and a newer checkpoint whose upload never finished is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_named_by_its_training_output_is_the_newest_complete_checkpoint() {
    let Some(bucket) = bucket() else { return };
    let base = unique_uri(&bucket, "infer-output-adapter");
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let data = s.join("val.jsonl");
    std::fs::write(&data, r#"{"query": "What is the capital of France?"}"#).unwrap();
    let model = fixture("models/tiny-Qwen2.5");
    let adapter = fixture("training/adapter");
    let run = format!("{base}/out/v0-20260101-000000");
    kubeswift_runtime::storage::checkpoint::upload_checkpoint(
        &adapter,
        &open(&format!("{run}/checkpoint-2")),
        &Default::default(),
    )
    .await
    .unwrap();
    // A newer checkpoint cut off mid-upload: files, no manifest, a broken weights file.
    let broken = s.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(
        adapter.join("adapter_config.json"),
        broken.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(broken.join("adapter_model.safetensors"), b"truncated").unwrap();
    upload_folder(&broken, &open(&format!("{run}/checkpoint-4"))).await;

    let local_result = s.join("local.jsonl");
    let (code, _, stderr) = swift(
        &infer_args(
            &model.display().to_string(),
            &adapter.display().to_string(),
            &data.display().to_string(),
            &local_result.display().to_string(),
        ),
        &s.join("cache"),
    );
    assert_eq!(code, 0, "{stderr}");
    let remote_result = s.join("remote.jsonl");
    let (code, _, stderr) = swift(
        &infer_args(
            &model.display().to_string(),
            &format!("{base}/out"),
            &data.display().to_string(),
            &remote_result.display().to_string(),
        ),
        &s.join("cache"),
    );
    // The root holds no adapter and checkpoint-4 cannot load: only checkpoint-2 answers so.
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        responses(&std::fs::read_to_string(&remote_result).unwrap()),
        responses(&std::fs::read_to_string(&local_result).unwrap())
    );
}
