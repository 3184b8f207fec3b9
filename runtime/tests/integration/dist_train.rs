//! Data-parallel training through the built `swift` binary on the tiny Qwen2.5 fixture:
//! NPROC_PER_NODE=2 (the launcher) and NNODES=2 on one machine end with the same LoRA
//! weights as one process with the same global batch; a worker killed mid-step makes the
//! other exit within --ddp_timeout with an error naming the lost rank.

use crate::adapters::{adapter_bits, adapter_f32 as adapter};
use crate::ports::free_port;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One compute thread per process: the CI machine has two cores.
fn swift(args: &[String], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swift"));
    cmd.args(args)
        .env("SWIFT_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("NPROC_PER_NODE")
        .env_remove("NNODES")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

/// Waits for a successful exit; returns stderr.
fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {:?}\n{stderr}", out.status);
    stderr
}

/// The training progress lines in a run's log.
fn progress_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("train::progress"))
        .count()
}

/// Rows whose lengths differ, so batches pad differently on 1 and 2 ranks.
fn write_dataset(path: &Path, rows: usize) {
    let words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma"];
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..rows {
        let q: Vec<&str> = (0..2 + i % 5)
            .map(|k| words[(i * 3 + k) % words.len()])
            .collect();
        let r: Vec<&str> = q.iter().rev().copied().collect();
        let row = serde_json::json!({"query": format!("reverse: {}", q.join(" ")), "response": r.join(" ")});
        writeln!(f, "{row}").unwrap();
    }
}

fn train_args(data: &Path, out: &Path, per_device: usize, steps: usize) -> Vec<String> {
    [
        "sft",
        "--model",
        &repo("runtime/tests/fixtures/models/tiny-Qwen2.5")
            .display()
            .to_string(),
        "--train_type",
        "lora",
        "--dataset",
        &data.display().to_string(),
        "--split_dataset_ratio",
        "0",
        "--max_steps",
        &steps.to_string(),
        "--save_steps",
        &steps.to_string(),
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        &per_device.to_string(),
        "--gradient_accumulation_steps",
        "2",
        "--lora_dropout",
        "0",
        "--learning_rate",
        "1e-3",
        "--seed",
        "7",
        "--average_tokens_across_devices",
        "true",
        "--ddp_timeout",
        "20",
        "--report_to",
        "none",
        "--add_version",
        "false",
        "--output_dir",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn norm(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// Every tensor equal within 1e-5 of its norm; the LoRA B matrices (zero at init) moved.
fn assert_close(got: &[(String, Vec<f32>)], want: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut trained = 0;
    let mut worst = 0f64;
    for ((k, a), (k2, b)) in got.iter().zip(want) {
        assert_eq!(k, k2, "{what}");
        let diff = norm(a.iter().zip(b).map(|(x, y)| x - y));
        let scale = norm(b.iter().copied());
        assert!(
            diff <= 1e-5 * scale,
            "{what}: {k}: |a-b| {diff:e} vs |b| {scale:e}"
        );
        if scale > 0.0 {
            worst = worst.max(diff / scale);
        }
        if k.contains("lora_B") && scale > 0.0 {
            trained += 1;
        }
    }
    assert!(trained > 0, "{what}: no LoRA B matrix was trained");
    eprintln!(
        "{what}: largest relative difference {worst:e} over {} tensors",
        got.len()
    );
}

#[test]
fn two_ranks_match_one_process_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    // 9 rows, global batch 4, accumulation 2: windows of 4+4, then 1 (rank 1 gets no row),
    // then the next epoch — uneven remainders on the way.
    write_dataset(&data, 9);
    let steps = 3;

    let single = dir.path().join("single");
    let single_log = finish(
        swift(
            &train_args(&data, &single, 4, steps),
            &[("SWIFT_LOG", "info".into())],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
        "1 process",
    );
    let want = adapter(&single.join(format!("checkpoint-{steps}")));

    // NPROC_PER_NODE=2: the launcher starts two workers.
    let launched = dir.path().join("nproc");
    let launched_log = finish(
        swift(
            &train_args(&data, &launched, 2, steps),
            &[
                ("NPROC_PER_NODE", "2".into()),
                ("MASTER_PORT", free_port().to_string()),
                ("SWIFT_LOG", "info".into()),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
        "NPROC_PER_NODE=2",
    );
    // The workers share the launcher's stderr; rank 0 alone shows progress.
    assert!(progress_lines(&single_log) > 0, "{single_log}");
    assert_eq!(
        progress_lines(&launched_log),
        progress_lines(&single_log),
        "{launched_log}"
    );
    assert_close(
        &adapter(&launched.join(format!("checkpoint-{steps}"))),
        &want,
        "NPROC_PER_NODE=2",
    );
    let lines = std::fs::read_to_string(launched.join("logging.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), steps, "rank 0 alone logs: {lines}");

    // NNODES=2 on one machine: two launchers, one worker each.
    let nodes = dir.path().join("nnodes");
    let port = free_port().to_string();
    let start = |node: usize| {
        swift(
            &train_args(&data, &nodes, 2, steps),
            &[
                ("NNODES", "2".into()),
                ("NODE_RANK", node.to_string()),
                ("NPROC_PER_NODE", "1".into()),
                ("MASTER_ADDR", "127.0.0.1".into()),
                ("MASTER_PORT", port.clone()),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (node1, node0) = (start(1), start(0));
    finish(node0, "NNODES=2 node 0");
    finish(node1, "NNODES=2 node 1");
    assert_close(
        &adapter(&nodes.join(format!("checkpoint-{steps}"))),
        &want,
        "NNODES=2",
    );
}

/// `--lazy_tokenize true`: each rank tokenizes only the rows of its share, at batch time;
/// the weights still equal one process's.
#[test]
fn lazily_tokenizing_ranks_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_dataset(&data, 9);
    let steps = 2;
    let lazy = |out: &Path, per_device: usize| {
        let mut args = train_args(&data, out, per_device, steps);
        args.extend(["--lazy_tokenize".to_string(), "true".to_string()]);
        args
    };
    let single = dir.path().join("single");
    finish(
        swift(&lazy(&single, 4), &[])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        "1 process",
    );
    let launched = dir.path().join("nproc");
    finish(
        swift(
            &lazy(&launched, 2),
            &[
                ("NPROC_PER_NODE", "2".into()),
                ("MASTER_PORT", free_port().to_string()),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
        "NPROC_PER_NODE=2 --lazy_tokenize true",
    );
    assert_close(
        &adapter(&launched.join(format!("checkpoint-{steps}"))),
        &adapter(&single.join(format!("checkpoint-{steps}"))),
        "lazy NPROC_PER_NODE=2",
    );
}

#[test]
fn a_worker_killed_mid_run_ends_the_job_naming_its_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_dataset(&data, 64);
    let out = dir.path().join("out");
    let port = free_port().to_string();
    let mut args = train_args(&data, &out, 2, 1000);
    // Workers started by hand (as torchrun would): RANK/WORLD_SIZE make them workers.
    let timeout = 5;
    let i = args.iter().position(|a| a == "--ddp_timeout").unwrap();
    args[i + 1] = timeout.to_string();
    let start = |rank: usize| {
        swift(
            &args,
            &[
                ("WORLD_SIZE", "2".into()),
                ("RANK", rank.to_string()),
                ("LOCAL_RANK", rank.to_string()),
                ("MASTER_ADDR", "127.0.0.1".into()),
                ("MASTER_PORT", port.clone()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (mut rank0, mut rank1) = (start(0), start(1));
    // Wait until training is under way (rank 0 logged a step), then kill rank 1.
    let log = out.join("logging.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&log).map_or(true, |t| t.lines().count() < 2) {
        assert!(rank0.try_wait().unwrap().is_none(), "rank 0 ended early");
        assert!(Instant::now() < deadline, "no training step after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let killed = Instant::now();
    let status = rank0.wait().unwrap();
    let waited = killed.elapsed();
    let mut stderr = String::new();
    for line in BufReader::new(rank0.stderr.take().unwrap()).lines() {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    assert!(!status.success(), "rank 0 survived its peer: {stderr}");
    // PEER_FAILED: the launcher and the operator look past this rank for the cause.
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(
        waited < Duration::from_secs(timeout + 10),
        "rank 0 took {waited:?} to notice"
    );
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// No GPU here: `--ddp_backend nccl` must stop every worker before the rendezvous with the
/// reason (the default build: not built for CUDA; the cuda build: this worker computes on
/// the CPU), never wait for peers or fall back silently.
#[test]
fn ddp_backend_nccl_without_a_gpu_fails_fast_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_dataset(&data, 8);
    let mut args = train_args(&data, &dir.path().join("out"), 2, 2);
    args.extend(["--ddp_backend".to_string(), "nccl".to_string()]);
    let started = Instant::now();
    let out = swift(
        &args,
        &[
            ("NPROC_PER_NODE", "2".into()),
            ("MASTER_PORT", free_port().to_string()),
            // The cuda build would use a GPU of the test machine if it had one.
            ("CUDA_VISIBLE_DEVICES", "".into()),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: {stderr}",
        started.elapsed()
    );
    assert!(stderr.contains("--ddp_backend nccl"), "{stderr}");
    let why = if cfg!(feature = "cuda") {
        "this worker computes on the CPU (CUDA_VISIBLE_DEVICES=\"\" hides every GPU)"
    } else {
        "needs the cuda build"
    };
    assert!(stderr.contains(why), "{stderr}");
    assert!(stderr.contains("use --ddp_backend gloo"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_launcher_stops_the_others_when_one_worker_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (launcher, workers) = launch_two_training_workers(dir.path());
    // SAFETY: a pid of our launcher's child, alive (the job is running).
    unsafe { libc::kill(workers[1], libc::SIGKILL) };
    let started = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains("exited with code 137 (killed by signal 9); stopping the other workers"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    for pid in workers {
        assert!(!running(pid), "worker {pid} still runs");
    }
}

#[test]
fn a_distributed_run_resumes_bit_identically_from_rank_zeros_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_dataset(&data, 11);
    let launch = |out: &Path, resume: Option<&Path>| {
        let mut args = train_args(&data, out, 2, 6);
        let i = args.iter().position(|a| a == "--save_steps").unwrap();
        args[i + 1] = "3".into();
        if let Some(ck) = resume {
            args.extend(["--resume_from_checkpoint".into(), ck.display().to_string()]);
        }
        finish(
            swift(
                &args,
                &[
                    ("NPROC_PER_NODE", "2".into()),
                    ("MASTER_PORT", free_port().to_string()),
                ],
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
            "NPROC_PER_NODE=2",
        );
    };
    let full = dir.path().join("full");
    launch(&full, None);
    let resumed = dir.path().join("resumed");
    launch(&resumed, Some(&full.join("checkpoint-3")));
    assert!(
        !resumed.join("checkpoint-3").exists(),
        "the resumed run restarted"
    );
    assert_eq!(
        adapter_bits(&resumed.join("checkpoint-6")),
        adapter_bits(&full.join("checkpoint-6"))
    );
}

#[test]
fn sigterm_to_the_launcher_reaches_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (launcher, children) = launch_two_training_workers(dir.path());
    // SAFETY: our own child process, still running.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    for pid in children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the launcher"
        );
    }
    // Both ranks agreed on the step to stop after, and rank 0 saved it.
    let steps: Vec<u64> = stderr
        .split("stopped by SIGTERM after step ")
        .skip(1)
        .filter_map(|rest| rest.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(steps.len(), 2, "{stderr}");
    assert_eq!(steps[0], steps[1], "{stderr}");
    let saved = dir
        .path()
        .join("out")
        .join(format!("checkpoint-{}", steps[0]));
    assert!(
        saved.join("adapter_model.safetensors").is_file(),
        "{stderr}"
    );
}

/// A worker that cannot stop (here: SIGSTOPped, as one hung in the kernel would be) is
/// SIGKILLed when the pod's termination grace, less the launcher's headroom, runs out, so the
/// launcher reports and exits before the kubelet kills the container; without the variable
/// it would wait its 60 s default.
#[test]
fn workers_that_outlast_the_pods_termination_grace_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (launcher, workers) = launch_two_training_workers_with(
        dir.path(),
        &[("KUBESWIFT_TERMINATION_GRACE_SECONDS", "5".into())],
    );
    // SAFETY: signals to our own live child processes.
    unsafe {
        libc::kill(workers[1], libc::SIGSTOP);
        libc::kill(launcher.id() as i32, libc::SIGTERM);
    }
    let (out, stderr) = ends_before_the_default_grace(launcher);
    assert!(stderr.contains("did not stop in time"), "{stderr}");
    // The pod's 5 s less the launcher's 3 s of headroom.
    assert!(
        stderr.contains("forwarding to the workers grace_s=2"),
        "{stderr}"
    );
    // A pipe is not a terminal: the log has no colour codes (`kubectl logs` shows them).
    assert!(!stderr.contains('\x1b'), "{stderr}");
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    for pid in workers {
        assert!(!running(pid), "worker {pid} still runs");
    }
}

/// Ctrl-C pressed twice: the first asks the workers to save their step, the second stops
/// them at once (without it the launcher would wait its 60 s default for the stuck one).
#[test]
fn a_second_interrupt_stops_the_workers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (launcher, workers) = launch_two_training_workers(dir.path());
    let pid = launcher.id() as i32;
    // SAFETY: signals to our own live child processes.
    unsafe {
        libc::kill(workers[1], libc::SIGSTOP);
        libc::kill(pid, libc::SIGINT);
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above; the launcher waits for its stuck worker, so it is still alive.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (_, stderr) = ends_before_the_default_grace(launcher);
    assert!(
        stderr.contains("second SIGINT: stopping the workers now"),
        "{stderr}"
    );
    for pid in workers {
        assert!(!running(pid), "worker {pid} still runs");
    }
}

/// Waits for a launcher whose stuck worker it must kill, and returns its output and stderr;
/// it must end well before its 60 s default grace would have let it (the tests give it a
/// shorter one, or a second signal).
fn ends_before_the_default_grace(launcher: Child) -> (std::process::Output, String) {
    let started = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the launcher waited {:?}: {stderr}",
        started.elapsed()
    );
    (out, stderr)
}

/// A launcher killed outright (SIGKILL: nothing to forward) takes its workers with it, so
/// none is left holding a device and waiting on peers (the kernel's parent-death signal).
#[test]
fn workers_die_with_a_killed_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let (mut launcher, children) = launch_two_training_workers(dir.path());
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in children {
        while running(pid) {
            assert!(
                Instant::now() < deadline,
                "worker {pid} outlived its SIGKILLed launcher by 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A NPROC_PER_NODE=2 training run past its second logged step: the launcher and the pids
/// of its workers.
fn launch_two_training_workers(dir: &Path) -> (std::process::Child, Vec<i32>) {
    launch_two_training_workers_with(dir, &[])
}

/// [`launch_two_training_workers`] with extra environment for the launcher.
fn launch_two_training_workers_with(
    dir: &Path,
    extra_env: &[(&str, String)],
) -> (std::process::Child, Vec<i32>) {
    let data = dir.join("data.jsonl");
    write_dataset(&data, 64);
    let out = dir.join("out");
    let mut launcher = swift(
        &train_args(&data, &out, 2, 100_000),
        &[
            ("NPROC_PER_NODE", "2".into()),
            ("MASTER_PORT", free_port().to_string()),
        ]
        .into_iter()
        .chain(extra_env.iter().cloned())
        .collect::<Vec<_>>(),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let log = out.join("logging.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&log).map_or(true, |t| t.lines().count() < 2) {
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the job ended early"
        );
        assert!(Instant::now() < deadline, "no training step after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", launcher.id())).unwrap();
    let workers: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "two workers: {children}");
    (launcher, workers)
}

/// Whether a process still runs: gone, or a zombie waiting to be reaped, is not running.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// `swift infer` with NPROC_PER_NODE=2: each worker answers half of the rows and rank 0
/// writes one result file in dataset order, equal to the single-process results.
#[test]
fn two_workers_split_inference_and_merge_results_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("val.jsonl");
    let rows: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"query": "question number {i}: what is {i} + {i}?"}}"#))
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let model = repo("runtime/tests/fixtures/models/tiny-Qwen2.5");
    let args = |result: &Path| -> Vec<String> {
        [
            "infer",
            "--model",
            &model.display().to_string(),
            "--val_dataset",
            &data.display().to_string(),
            "--max_new_tokens",
            "5",
            "--temperature",
            "0",
            "--result_path",
            &result.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let single = dir.path().join("single.jsonl");
    let out = swift(&args(&single), &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split = dir.path().join("split.jsonl");
    let out = swift(
        &args(&split),
        &[
            ("NPROC_PER_NODE", "2".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", free_port().to_string()),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (single, split) = (read(&single), read(&split));
    assert_eq!(split.len(), 5, "every row answered once");
    assert_eq!(single, split);
    for (i, row) in split.iter().enumerate() {
        let query = row["messages"][0]["content"].as_str().unwrap();
        assert!(
            query.starts_with(&format!("question number {i}:")),
            "{query}"
        );
    }
}
