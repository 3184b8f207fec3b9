//! Broken model folders: each gives one clear error naming the file or field, never a panic.

use std::path::{Path, PathBuf};

use kubeswift_runtime::model::{Pretrained, PretrainedOptions};
use serde_json::Value;

/// A private copy of a fixture folder to break.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    (dir, dst)
}

fn load_err(folder: &Path) -> String {
    match Pretrained::load(folder, &PretrainedOptions::default()) {
        Ok(_) => panic!("{} loaded", folder.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(folder: &Path, f: impl FnOnce(&mut Value)) {
    let path = folder.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_missing_shard_is_named() {
    let (_tmp, folder) = copy_fixture("tiny-Qwen2.5");
    std::fs::remove_file(folder.join("model-00003-of-00010.safetensors")).unwrap();
    let e = load_err(&folder);
    assert!(
        e.contains("model-00003-of-00010.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn missing_weights_are_named() {
    let (_tmp, folder) = copy_fixture("tiny-Qwen3");
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let e = load_err(&folder);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    let (_tmp, folder) = copy_fixture("tiny-Qwen3");
    let path = folder.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&folder);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn a_garbage_header_is_named() {
    let (_tmp, folder) = copy_fixture("tiny-Llama-3.2");
    std::fs::write(
        folder.join("model.safetensors"),
        b"\x10\0\0\0\0\0\0\0not json at all!",
    )
    .unwrap();
    let e = load_err(&folder);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn an_unknown_architecture_names_the_field() {
    let (_tmp, folder) = copy_fixture("tiny-Llama-3.2");
    edit_config(&folder, |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let e = load_err(&folder);
    assert!(
        e.contains("config.json") && e.contains("'architectures'") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let (_tmp, folder) = copy_fixture("tiny-Llama-3.2");
    edit_config(&folder, |v| v["vocab_size"] = serde_json::json!(300));
    let e = load_err(&folder);
    assert!(
        e.contains("tokenizer.json")
            && e.contains("384 tokens")
            && e.contains("'vocab_size' is 300"),
        "{e}"
    );
}

#[test]
fn a_weight_of_the_wrong_shape_is_named() {
    let (_tmp, folder) = copy_fixture("tiny-Qwen3");
    edit_config(&folder, |v| v["intermediate_size"] = serde_json::json!(100));
    let e = load_err(&folder);
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[100, 64]"),
        "{e}"
    );
}

#[test]
fn a_corrupt_config_names_file_and_line() {
    let (_tmp, folder) = copy_fixture("tiny-Qwen3");
    std::fs::write(
        folder.join("config.json"),
        "{\n  \"architectures\": [\"Qwen3ForCausalLM\"],\n  oops\n}",
    )
    .unwrap();
    let e = load_err(&folder);
    assert!(e.contains("config.json") && e.contains("line 3"), "{e}");
}

#[test]
fn a_folder_without_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
    let e = load_err(&dir.path().join("nope"));
    assert!(e.contains("nope") && e.contains("--model"), "{e}");
}
