//! The trainer learns: full fine-tuning of the tiny Qwen2.5 fixture on a generated,
//! deterministic task (reverse two words: "reverse: a the" -> "so: the a") makes the eval
//! loss fall by more than half, and `swift infer` on the saved checkpoint answers most
//! held-out prompts exactly (greedy).
//!
//! The short system prompt matters: ms-swift's default Qwen2.5 system prompt is ~60 tokens
//! in the fixture's 400-token vocabulary, which a 2-layer, 64-wide random model takes far
//! longer to see past (PyTorch behaves the same).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// Words that are one token each (with a leading space) in the fixture's vocabulary.
const WORDS: &[&str] = &[
    "Fran", "France", "P", "Paris", "a", "add", "and", "are", "b", "c", "cap", "capital", "d", "f",
    "is", "j", "ju", "l", "langu", "language", "m", "o", "of", "on", "p", "pods", "qu", "s", "t",
    "th", "the", "to", "w", "with", "you",
];

fn swift(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swift"))
        .args(args)
        .env("SWIFT_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every ordered pair of distinct words, in a fixed shuffled order (a small LCG: the
/// test needs the same data on every machine, not good randomness).
fn pairs() -> Vec<(usize, usize)> {
    let n = WORDS.len();
    let mut all: Vec<(usize, usize)> = (0..n)
        .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect();
    let mut state = 12345u64;
    for i in (1..all.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        all.swap(i, (state >> 33) as usize % (i + 1));
    }
    all
}

fn write_rows(path: &Path, rows: &[(usize, usize)]) {
    let mut f = std::fs::File::create(path).unwrap();
    for &(a, b) in rows {
        let row = json!({
            "query": format!("reverse: {} {}", WORDS[a], WORDS[b]),
            "response": format!("so: {} {}", WORDS[b], WORDS[a]),
        });
        writeln!(f, "{row}").unwrap();
    }
}

fn only_child(dir: &Path) -> PathBuf {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.pop().unwrap()
}

#[test]
fn reversing_word_pairs_is_learned_and_generalises_to_held_out_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let all = pairs();
    let (held_out, train) = all.split_at(40);
    let train_path = dir.path().join("train.jsonl");
    let val_path = dir.path().join("val.jsonl");
    write_rows(&train_path, train);
    write_rows(&val_path, held_out);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-Qwen2.5");
    let out = dir.path().join("out");
    let (code, stderr) = swift(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--train_type",
        "full",
        "--dataset",
        train_path.to_str().unwrap(),
        "--val_dataset",
        val_path.to_str().unwrap(),
        "--system",
        "You are a helpful assistant.",
        "--max_steps",
        "240",
        "--learning_rate",
        "5e-3",
        "--weight_decay",
        "0",
        "--lr_scheduler_type",
        "constant",
        "--per_device_train_batch_size",
        "32",
        "--per_device_eval_batch_size",
        "40",
        "--eval_steps",
        "40",
        "--save_steps",
        "240",
        "--gradient_checkpointing",
        "false",
        "--report_to",
        "none",
        "--output_dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let run = only_child(&out);
    let evals: Vec<f64> = std::fs::read_to_string(run.join("logging.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["eval_loss"].as_f64())
        .collect();
    assert_eq!(evals.len(), 6, "{evals:?}");
    let (first, last) = (evals[0], evals[evals.len() - 1]);
    assert!(last < first / 2.0, "eval loss {first} -> {last}: {evals:?}");

    // Greedy answers of the full checkpoint on the held-out pairs.
    let result = dir.path().join("result.jsonl");
    let ck = run.join("checkpoint-240");
    let (code, stderr) = swift(&[
        "infer",
        "--model",
        ck.to_str().unwrap(),
        "--val_dataset",
        val_path.to_str().unwrap(),
        "--temperature",
        "0",
        "--max_new_tokens",
        "12",
        "--max_batch_size",
        "40",
        "--result_path",
        result.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<Value> = std::fs::read_to_string(&result)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), held_out.len());
    let correct = rows
        .iter()
        .filter(|r| r["response"].as_str().map(str::trim) == r["labels"].as_str().map(str::trim))
        .count();
    assert!(
        correct * 4 >= rows.len() * 3,
        "{correct}/{} held-out pairs reversed exactly; eval losses {evals:?}",
        rows.len()
    );
}
