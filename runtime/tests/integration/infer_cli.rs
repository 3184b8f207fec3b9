//! `swift infer` over a dataset with the tiny fixture model: ms-swift's result jsonl,
//! `--val_dataset_sample`, `--metric`, `--logprobs`, and argument errors.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
        .display()
        .to_string()
}

fn swift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args(args)
        .env("SWIFT_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dataset_inference_writes_ms_swift_results_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("val.jsonl");
    std::fs::write(
        &data,
        [
            r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris"}]}"#,
            r#"{"query": "Hello, world!", "response": "Hi"}"#,
            r#"{"query": "1 + 1 = 2"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let result = dir.path().join("out/result.jsonl");
    let (code, stdout, stderr) = swift(&[
        "infer",
        "--model",
        &fixture("tiny-Qwen2.5"),
        "--val_dataset",
        &data.display().to_string(),
        "--val_dataset_sample",
        "2",
        "--max_new_tokens",
        "4",
        "--temperature",
        "0",
        "--logprobs",
        "true",
        "--top_logprobs",
        "2",
        "--max_batch_size",
        "2",
        "--metric",
        "acc",
        "--result_path",
        &result.display().to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&result.display().to_string()), "{stdout}");
    let metric: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(metric["acc"].as_f64().is_some(), "{stdout}");
    let rows: Vec<Value> = std::fs::read_to_string(&result)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["response", "labels", "logprobs", "messages"]);
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        assert_eq!(messages.last().unwrap()["content"], row["response"]);
        assert_eq!(messages[messages.len() - 2]["role"], "user");
        let content = row["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty() && content.len() <= 4);
        assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn interactive_chat_reads_stdin_until_quit() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args([
            "infer",
            "--model",
            &fixture("tiny-Llama-3.2"),
            "--max_new_tokens",
            "3",
        ])
        .env("SWIFT_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("<<< ").count(), 2, "{stdout}");
}

/// Beam search streams no tokens (the best beam is known only at the end): the chat still
/// prints the answer, the same one a non-interactive run writes to its result file.
#[test]
fn interactive_beam_search_prints_its_answer() {
    use std::io::Write;
    let model = fixture("tiny-Llama-3.2");
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args([
            "infer",
            "--model",
            &model,
            "--max_new_tokens",
            "4",
            "--num_beams",
            "2",
            "--result_path",
            &results,
        ])
        .env("SWIFT_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&results)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let answer = record["response"].as_str().unwrap();
    assert!(!answer.is_empty(), "{record}");
    let printed = stdout.split("<<< ").nth(1).unwrap_or_default();
    assert!(
        printed.contains(answer),
        "printed {printed:?}, answer {answer:?}"
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let (code, _, stderr) = swift(&["infer", "--model", "/no/such/model"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such/model"), "{stderr}");
    let (code, _, stderr) = swift(&[
        "infer",
        "--model",
        &fixture("tiny-Qwen3"),
        "--torch_dtype",
        "float16",
        "--val_dataset",
        "/no/such.jsonl",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such.jsonl"), "{stderr}");
    let (code, _, stderr) = swift(&[
        "infer",
        "--model",
        &fixture("tiny-Qwen3"),
        "--adapters",
        "ckpt",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--adapters"), "{stderr}");
}

#[test]
fn a_row_that_cannot_be_asked_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("val.jsonl");
    // Line 2 is only a label: with the final assistant turn taken as the label, nothing is
    // left to ask.
    std::fs::write(
        &data,
        [
            r#"{"query": "Hello", "response": "Hi"}"#,
            r#"{"messages": [{"role": "assistant", "content": "x"}]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let data = data.display().to_string();
    let (code, _, stderr) = swift(&[
        "infer",
        "--model",
        &fixture("tiny-Qwen2.5"),
        "--val_dataset",
        &data,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("{data}:2")), "{stderr}");
}

#[test]
fn max_model_len_caps_the_prompt_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("val.jsonl");
    std::fs::write(&data, r#"{"query": "Hello there, how are you today?"}"#).unwrap();
    let result = dir.path().join("result.jsonl");
    let run = |len: &str| {
        swift(&[
            "infer",
            "--model",
            &fixture("tiny-Qwen2.5"),
            "--val_dataset",
            &data.display().to_string(),
            "--max_new_tokens",
            "2",
            "--result_path",
            &result.display().to_string(),
            "--max_model_len",
            len,
        ])
    };
    let (code, _, stderr) = run("4");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--max_model_len"), "{stderr}");
    assert!(!result.exists());
    let (code, _, stderr) = run("4096");
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&result).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.ends_with('\n'));
}
