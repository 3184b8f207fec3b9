//! Dataset loading + tokenisation throughput: `data::prepare` (read, preprocess, encode with
//! the qwen template) and the streamed path, at 1 and 2 threads.
//!
//! `BENCH_DATA_FILE=path.jsonl cargo bench -p kubeswift-runtime --bench data_encode` times a
//! given file (runtime/benches/data_encode.py makes one and times ms-swift on it too);
//! without it a file of 20000 conversations is generated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kubeswift_runtime::data::{self, DataOptions, DatasetSpec, Shard, TrainStream};
use kubeswift_runtime::template::{Template, TemplateOptions};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

fn template() -> Arc<Template> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/chatml");
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    Arc::new(Template::new(&TemplateOptions::new("qwen"), tokenizer, &config).unwrap())
}

/// Deterministic conversations: a system prompt and two rounds of pseudo-random words.
fn generate(path: &Path, rows: usize) {
    let words = [
        "the", "capital", "of", "France", "is", "Paris", "model", "train", "data", "你好", "世界",
        "apple",
    ];
    let mut state: u64 = 42;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut text = |n: usize| {
        (0..n)
            .map(|_| words[next() % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    for _ in 0..rows {
        let row = json!({"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text(20)},
            {"role": "assistant", "content": text(60)},
            {"role": "user", "content": text(15)},
            {"role": "assistant", "content": text(40)},
        ]});
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    // `cargo test --all-targets` runs this binary without `--bench`: a small smoke run then.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let file: PathBuf = match std::env::var("BENCH_DATA_FILE") {
        Ok(p) if benchmarking => p.into(),
        _ => {
            let p = tmp.path().join("bench.jsonl");
            generate(&p, if benchmarking { 20_000 } else { 200 });
            p
        }
    };
    let template = template();
    let base = DataOptions {
        dataset: vec![DatasetSpec::parse(file.to_str().unwrap()).unwrap()],
        ..DataOptions::default()
    };
    println!("| implementation | path | threads | rows | tokens | seconds | rows/s | tokens/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for threads in [1, 2] {
        let opts = DataOptions {
            num_proc: threads,
            ..base.clone()
        };
        let start = Instant::now();
        let prepared = data::prepare(&opts, template.clone()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let rows = prepared.train.len();
        let tokens: usize = (0..rows)
            .map(|i| prepared.train.get(i).unwrap().len())
            .sum();
        report("kubeswift", "load+encode", threads, rows, tokens, secs);

        let opts = DataOptions {
            streaming: true,
            ..opts
        };
        let start = Instant::now();
        let mut rows = 0;
        let mut tokens = 0;
        for row in TrainStream::new(&opts, template.clone(), Shard::ALL).unwrap() {
            rows += 1;
            tokens += row.unwrap().len();
        }
        report(
            "kubeswift",
            "streaming",
            threads,
            rows,
            tokens,
            start.elapsed().as_secs_f64(),
        );
    }
}

fn report(who: &str, path: &str, threads: usize, rows: usize, tokens: usize, secs: f64) {
    println!(
        "| {who} | {path} | {threads} | {rows} | {tokens} | {secs:.3} | {:.0} | {:.0} |",
        rows as f64 / secs,
        tokens as f64 / secs
    );
}
