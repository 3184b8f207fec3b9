//! `swift sft --streaming true` through the built binary on the tiny Qwen2.5 fixture: a
//! streamed run trains (and restarts its stream when it runs out), `--max_steps` is
//! required, a resumed run continues from the checkpoint's stream cursor to the same
//! weights (one process and two ranks), two ranks read disjoint shards of a local or bucket
//! file, a bucket dataset streams without a download, and memory stays flat however large
//! the stream.

use crate::adapters::adapter_bits;
use crate::storage_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use storage_support::*;

fn model_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/tiny-Qwen2.5")
        .display()
        .to_string()
}

/// `rows` "reverse the words" rows of exactly the same byte length (ids zero-padded), so
/// byte-range shards split them evenly; `pad` bytes of an unused column make rows big.
fn write_dataset(path: &Path, rows: usize, pad: usize) -> u64 {
    // Words of one length, so every row has the same length.
    let words = [
        "alpha", "gamma", "delta", "omega", "kappa", "sigma", "theta",
    ];
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let filler = "x".repeat(pad);
    let mut total = 0u64;
    for i in 0..rows {
        let q: Vec<&str> = (0..3).map(|k| words[(i * 3 + k) % words.len()]).collect();
        let r: Vec<&str> = q.iter().rev().copied().collect();
        let row = serde_json::json!({
            "query": format!("{i:05} reverse: {}", q.join(" ")),
            "response": r.join(" "),
            "meta": filler,
        });
        let line = format!("{row}\n");
        total += line.len() as u64;
        f.write_all(line.as_bytes()).unwrap();
    }
    f.flush().unwrap();
    total
}

fn args(data: &str, out: &Path, steps: u32, extra: &[&str]) -> Vec<String> {
    args_batch(data, out, steps, 2, extra)
}

fn args_batch(data: &str, out: &Path, steps: u32, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sft",
        "--model",
        &model_dir(),
        "--train_type",
        "lora",
        "--dataset",
        data,
        "--streaming",
        "true",
        "--max_steps",
        &steps.to_string(),
        "--per_device_train_batch_size",
        &batch.to_string(),
        "--learning_rate",
        "5e-3",
        "--seed",
        "7",
        "--report_to",
        "none",
        "--add_version",
        "false",
        "--output_dir",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `swift` with one compute thread and its own cache and staging folder under `scratch`.
fn swift(args: &[String], scratch: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swift"));
    cmd.args(args)
        .env("SWIFT_LOG", "info")
        .env("NO_COLOR", "1")
        .env("RAYON_NUM_THREADS", "1")
        .env("MODELSCOPE_CACHE", scratch.join("cache"))
        .env("TMPDIR", scratch.join("tmp"))
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("NPROC_PER_NODE")
        .env_remove("NNODES")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::fs::create_dir_all(scratch.join("tmp")).unwrap();
    cmd
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {:?}\n{stderr}", out.status);
    stderr
}

fn run_ok(args: &[String], scratch: &Path) -> String {
    finish(swift(args, scratch).spawn().unwrap(), "swift sft")
}

/// The per-rank stream cursors a checkpoint holds.
fn cursors(ck: &Path) -> Vec<(u64, u64)> {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("kubeswift_state.json")).unwrap())
            .unwrap();
    state["stream"]
        .as_array()
        .unwrap_or_else(|| panic!("no stream cursor in {state}"))
        .iter()
        .map(|c| (c["epoch"].as_u64().unwrap(), c["rows"].as_u64().unwrap()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The row counts rank `rank` logged each time its shard ran out (`rows=N`).
fn ran_out(stderr: &str, rank: usize) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("shard ran out") && l.contains(&format!("rank={rank} ")))
        .inspect(|l| assert!(l.contains("world=2"), "{l}"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("rows=")))
        .collect()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("logging.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

#[test]
fn a_streamed_run_learns_and_reads_its_stream_again_when_it_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_dataset(&data, 6, 0);
    let out = dir.path().join("out");
    let stderr = run_ok(
        &args(
            &data.display().to_string(),
            &out,
            24,
            &["--logging_steps", "1", "--save_steps", "12"],
        ),
        dir.path(),
    );
    // 6 rows in batches of 2: every 3 steps the stream is read to its end, and the next
    // step finds it empty and reads it again; 24 steps read it 8 times (7 restarts).
    assert_eq!(
        stderr.matches("shard ran out").count(),
        7,
        "restarts:\n{stderr}"
    );
    assert_eq!(cursors(&out.join("checkpoint-12")), [(3, 6)]);
    assert_eq!(cursors(&out.join("checkpoint-24")), [(7, 6)]);
    let loss = losses(&out);
    assert_eq!(loss.len(), 24, "{loss:?}");
    let first: f64 = loss[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = loss[21..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 0.8, "loss did not fall: {loss:?}");
    // LoRA B starts at zero; training moved it.
    let bits = adapter_bits(&out.join("checkpoint-24"));
    assert!(
        bits.iter()
            .filter(|(k, _)| k.contains("lora_B"))
            .all(|(_, b)| b.iter().any(|&x| f32::from_bits(x) != 0.0)),
        "a lora_B stayed zero"
    );
}

#[test]
fn streaming_without_max_steps_is_refused_naming_both_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_dataset(&data, 4, 0);
    let mut a = args(&data.display().to_string(), &dir.path().join("out"), 1, &[]);
    let at = a.iter().position(|s| s == "--max_steps").unwrap();
    a.drain(at..at + 2);
    let out = swift(&a, dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max_steps") && stderr.contains("--streaming"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "a refused run wrote output"
    );
}

#[test]
fn a_resumed_streamed_run_skips_what_it_trained_on_and_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    // 11 rows: batches 2,2,2,2,2,1 per epoch, so the short last batch is exercised.
    write_dataset(&data, 11, 0);
    let data = data.display().to_string();
    // Dropout and NEFTune draw from counters that must resume exactly too.
    let extra = [
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "5",
        "--lora_dropout",
        "0.1",
        "--neftune_noise_alpha",
        "5",
    ];
    let full = dir.path().join("full");
    run_ok(&args(&data, &full, 8, &extra), dir.path());
    // Step 5 = micro-batch 10: the second epoch's fourth batch is done, 8 rows into it.
    let midway = full.join("checkpoint-5");
    assert_eq!(cursors(&midway), [(1, 8)]);

    let resumed = dir.path().join("resumed");
    let mut a = args(&data, &resumed, 8, &extra);
    a.extend([
        "--resume_from_checkpoint".into(),
        midway.display().to_string(),
    ]);
    let stderr = run_ok(&a, dir.path());
    assert!(stderr.contains("skipped the rows"), "{stderr}");
    assert_eq!(
        cursors(&resumed.join("checkpoint-8")),
        cursors(&full.join("checkpoint-8"))
    );
    let (want, got) = (
        adapter_bits(&full.join("checkpoint-8")),
        adapter_bits(&resumed.join("checkpoint-8")),
    );
    assert!(!want.is_empty());
    assert!(want == got, "the resumed run's adapter differs");
}

#[test]
fn a_resumed_packed_stream_rebuilds_the_same_bins() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    // Rows of ~110 tokens packed into rows of 256: two samples a bin, 20 bins a read.
    write_dataset(&data, 40, 0);
    let data = data.display().to_string();
    let extra = [
        "--packing",
        "true",
        "--max_length",
        "256",
        "--save_steps",
        "7",
        "--lora_dropout",
        "0.1",
    ];
    let full = dir.path().join("full");
    run_ok(&args(&data, &full, 12, &extra), dir.path());
    // 7 steps of 2 packed rows: 14 of the 20 bins.
    let midway = full.join("checkpoint-7");
    assert_eq!(cursors(&midway), [(0, 14)]);
    let resumed = dir.path().join("resumed");
    let mut a = args(&data, &resumed, 12, &extra);
    a.extend([
        "--resume_from_checkpoint".into(),
        midway.display().to_string(),
    ]);
    run_ok(&a, dir.path());
    assert_eq!(cursors(&full.join("checkpoint-12")), [(1, 4)]);
    assert!(
        adapter_bits(&full.join("checkpoint-12")) == adapter_bits(&resumed.join("checkpoint-12")),
        "the resumed packed run's adapter differs"
    );
}

#[test]
fn two_ranks_each_stream_their_own_half_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_dataset(&data, 12, 0);
    let out = dir.path().join("out");
    let mut cmd = two_ranks(
        &args(
            &data.display().to_string(),
            &out,
            4,
            &["--ddp_timeout", "30", "--save_steps", "4"],
        ),
        dir.path(),
    );
    let stderr = finish(cmd.spawn().unwrap(), "two ranks");
    // Each rank's shard is 6 of the 12 equal rows: one full read of it per rank (a rank
    // reading the whole file would report 12 and stand at (0, 8)).
    for rank in 0..2 {
        assert_eq!(ran_out(&stderr, rank), ["rows=6"], "rank {rank}:\n{stderr}");
    }
    // 4 steps × 2 rows per rank: 6 rows of the first epoch, then 2 of the second.
    assert_eq!(cursors(&out.join("checkpoint-4")), [(1, 2), (1, 2)]);
}

/// `swift sft` as NPROC_PER_NODE=2 workers.
fn two_ranks(args: &[String], scratch: &Path) -> Command {
    let mut cmd = swift(args, scratch);
    cmd.env("NPROC_PER_NODE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string());
    cmd
}

#[test]
fn two_ranks_resume_each_from_its_own_cursor_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    // 14 rows: 7 per rank, batches 2,2,2,1 per read of a shard.
    write_dataset(&data, 14, 0);
    let data = data.display().to_string();
    let extra = [
        "--ddp_timeout",
        "30",
        "--save_steps",
        "3",
        "--lora_dropout",
        "0.1",
    ];
    let full = dir.path().join("full");
    finish(
        two_ranks(&args(&data, &full, 6, &extra), dir.path())
            .spawn()
            .unwrap(),
        "uninterrupted",
    );
    // Step 3: both ranks have read 6 of their 7 rows.
    let midway = full.join("checkpoint-3");
    assert_eq!(cursors(&midway), [(0, 6), (0, 6)]);
    let resumed = dir.path().join("resumed");
    let mut a = args(&data, &resumed, 6, &extra);
    a.extend([
        "--resume_from_checkpoint".into(),
        midway.display().to_string(),
    ]);
    let stderr = finish(two_ranks(&a, dir.path()).spawn().unwrap(), "resumed");
    assert_eq!(stderr.matches("skipped the rows").count(), 2, "{stderr}");
    assert_eq!(
        cursors(&resumed.join("checkpoint-6")),
        cursors(&full.join("checkpoint-6"))
    );
    assert!(
        adapter_bits(&full.join("checkpoint-6")) == adapter_bits(&resumed.join("checkpoint-6")),
        "the resumed two-rank run's adapter differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_dataset_streams_into_training_without_a_download() {
    let Some(bucket) = bucket() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("train.jsonl");
    write_dataset(&local, 8, 0);
    let uri = format!("{}/train.jsonl", unique_uri(&bucket, "stream"));
    put(&open(&uri), "", std::fs::read(&local).unwrap()).await;
    let out = dir.path().join("out");
    let a = args(&uri, &out, 6, &["--save_steps", "6"]);
    let scratch = dir.path().to_path_buf();
    let stderr = tokio::task::spawn_blocking(move || run_ok(&a, &scratch))
        .await
        .unwrap();
    // 8 rows, batches of 2: 6 steps read the stream once and 4 rows of the second time.
    assert_eq!(stderr.matches("shard ran out").count(), 1, "{stderr}");
    assert_eq!(cursors(&out.join("checkpoint-6")), [(1, 4)]);
    // Read with ranged GETs, never copied into the cache.
    assert!(!stderr.contains("downloading"), "{stderr}");
    assert!(
        !dir.path().join("cache").exists(),
        "the dataset was downloaded into the cache"
    );
    // args.json keeps the URI as given.
    let saved = std::fs::read_to_string(out.join("args.json")).unwrap();
    assert!(saved.contains(&uri), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ranks_stream_their_halves_of_a_bucket_file() {
    let Some(bucket) = bucket() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("train.jsonl");
    write_dataset(&local, 10, 0);
    let uri = format!("{}/train.jsonl", unique_uri(&bucket, "stream2"));
    put(&open(&uri), "", std::fs::read(&local).unwrap()).await;
    let out = dir.path().join("out");
    let mut cmd = two_ranks(
        &args(&uri, &out, 3, &["--ddp_timeout", "30", "--save_steps", "3"]),
        dir.path(),
    );
    let stderr = tokio::task::spawn_blocking(move || finish(cmd.spawn().unwrap(), "two ranks"))
        .await
        .unwrap();
    for rank in 0..2 {
        assert_eq!(ran_out(&stderr, rank), ["rows=5"], "rank {rank}:\n{stderr}");
    }
    // 3 steps per rank: the shard's 5 rows in batches of 2, 2 and a short 1, after
    // which each rank has restarted its shard.
    assert_eq!(cursors(&out.join("checkpoint-3")), [(1, 0), (1, 0)]);
}

/// Child half of `training_over_a_large_stream_keeps_memory_flat`: trains in this process
/// over `CHILD_DATA` once and reports its peak RSS.
#[test]
#[ignore = "run by training_over_a_large_stream_keeps_memory_flat in a child process"]
fn helper_stream_train_child() {
    let data = std::env::var("CHILD_DATA").unwrap();
    let out = PathBuf::from(std::env::var("CHILD_OUT").unwrap());
    let steps: u32 = std::env::var("CHILD_STEPS").unwrap().parse().unwrap();
    let argv: Vec<String> = std::iter::once("swift".to_string())
        .chain(args_batch(
            &data,
            &out,
            steps,
            CHILD_BATCH,
            &["--save_strategy", "no", "--logging_steps", "1000"],
        ))
        .collect();
    let kubeswift_args::cli::Cli::Run { resolved, .. } =
        kubeswift_args::cli::parse(argv.iter().map(String::as_str)).unwrap()
    else {
        panic!("not a run");
    };
    let summary = kubeswift_runtime::train::command::run(&resolved.args).unwrap();
    assert_eq!(summary.global_step, steps as u64);
    println!("PEAK_RSS={}", peak_rss());
}

/// Rows per micro-batch in the memory test: few steps, every row still trained on.
const CHILD_BATCH: usize = 16;

/// Trains over a stream of `rows` rows once in a child process; its peak RSS.
fn child_peak(dir: &Path, name: &str, rows: usize) -> (u64, u64) {
    let data = dir.join(format!("{name}.jsonl"));
    // Rows of ~64 KB (an unused column), a few tokens each: bytes without compute.
    let bytes = write_dataset(&data, rows, 64 << 10);
    let child = spawn_helper(
        "train_streaming::helper_stream_train_child",
        &[
            ("CHILD_DATA", data.display().to_string()),
            ("CHILD_OUT", dir.join(name).display().to_string()),
            ("CHILD_STEPS", (rows / CHILD_BATCH).to_string()),
            ("RAYON_NUM_THREADS", "1".into()),
            ("SWIFT_LOG", "warn".into()),
        ],
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_file(&data);
    (
        reported(&String::from_utf8_lossy(&out.stdout), "PEAK_RSS"),
        bytes,
    )
}

#[test]
fn training_over_a_large_stream_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let (small_peak, small) = child_peak(dir.path(), "small", 400);
    let (large_peak, large) = child_peak(dir.path(), "large", 1600);
    eprintln!(
        "streamed {} MB: peak RSS {} MB; {} MB: peak RSS {} MB",
        small >> 20,
        small_peak >> 20,
        large >> 20,
        large_peak >> 20
    );
    // The whole large stream passed through training, yet the process never held it...
    assert!(
        large_peak < large,
        "peak RSS {large_peak} is not below the {large} bytes streamed"
    );
    // ...and four times the data did not raise the peak by more than a small fraction of
    // the extra bytes (a window of rows is held, never the dataset).
    assert!(
        large_peak.saturating_sub(small_peak) < (large - small) / 8,
        "peak RSS grew from {small_peak} to {large_peak} with {} more bytes streamed",
        large - small
    );
}
