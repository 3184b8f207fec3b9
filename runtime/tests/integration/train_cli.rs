//! `swift sft` / `swift pt` through the built binary on the tiny fixture models: ms-swift's
//! output layout, PEFT-format checkpoints that `swift infer --adapters` loads (the README's
//! main-job command shape), exact resume after SIGKILL, and clear errors on bad input.

use crate::adapters::adapter_bits;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

fn model(name: &str) -> String {
    repo(&format!("runtime/tests/fixtures/models/{name}"))
}

/// One compute thread: tiny models gain nothing from more, and spinning barrier threads
/// crawl when other test binaries share the two CI cores.
fn swift_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swift"));
    cmd.args(args)
        .env("SWIFT_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1");
    cmd
}

/// Runs `swift` with `input` on stdin; returns its stdout, failing the test if it fails.
fn swift_with_stdin(args: &[&str], input: &[u8]) -> String {
    let mut child = swift_cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn swift(args: &[&str]) -> (i32, String, String) {
    let out = swift_cmd(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The single `vN-*` run folder under `root`.
fn run_dir(root: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let name = runs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("v0-") && name.len() == "v0-20260101-000000".len(),
        "{name}"
    );
    runs[0].clone()
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sft_lora_writes_ms_swift_layout_and_infer_answers_with_the_adapter() {
    let out = tempfile::tempdir().unwrap();
    let output_dir = out.path().display().to_string();
    let data = repo("examples/data/self_cognition.jsonl");
    let (code, _, stderr) = swift(&[
        "sft",
        "--model",
        &model("tiny-Qwen2.5"),
        "--train_type",
        "lora",
        "--dataset",
        &data,
        "--model_name",
        "Kuby",
        "--model_author",
        "kubeswift",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "3",
        "--eval_steps",
        "3",
        "--logging_steps",
        "2",
        "--save_total_limit",
        "1",
        "--split_dataset_ratio",
        "0.1",
        "--output_dir",
        &output_dir,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let run = run_dir(out.path());
    for f in ["args.json", "logging.jsonl", "val_dataset.jsonl"] {
        assert!(run.join(f).is_file(), "{f} missing in {}", run.display());
    }
    assert!(
        std::fs::read_dir(run.join("runs")).unwrap().count() > 0,
        "no TensorBoard file"
    );
    // save_total_limit 1 keeps only the last checkpoint, written complete.
    assert!(!run.join("checkpoint-3").exists());
    // No `--create_checkpoint_symlink`: no best/last links (ms-swift's default).
    for link in ["best", "last"] {
        assert!(
            std::fs::symlink_metadata(run.join(link)).is_err(),
            "{link} exists without --create_checkpoint_symlink"
        );
    }
    let ck = run.join("checkpoint-6");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "args.json",
        "trainer_state.json",
        "optimizer.safetensors",
        "kubeswift_state.json",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing in checkpoint-6");
    }
    // The weights are as readable as the JSON beside them (another user's serving pod
    // loads them): not the 0600 of the temporary file safetensors writes through.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(ck.join(f)).unwrap().permissions().mode() & 0o777;
        for f in ["adapter_model.safetensors", "optimizer.safetensors"] {
            assert_eq!(mode(f), mode("adapter_config.json"), "{f}");
        }
    }
    let adapter = candle_core::safetensors::load(
        ck.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let a = &adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &adapter["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), [8, 64]);
    assert_eq!(b.dims(), [64, 8]);
    assert_eq!(
        adapter.len(),
        2 * 7 * 2,
        "all-linear: 7 linears x 2 layers x (A, B)"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["global_step"], 6);
    assert!(state["log_history"].as_array().unwrap().len() >= 3);
    let logs = jsonl(&run.join("logging.jsonl"));
    let train: Vec<&Value> = logs.iter().filter(|l| l.get("loss").is_some()).collect();
    let eval: Vec<&Value> = logs
        .iter()
        .filter(|l| l.get("eval_loss").is_some())
        .collect();
    assert!(!train.is_empty() && eval.len() == 2, "{logs:?}");
    for key in [
        "loss",
        "grad_norm",
        "learning_rate",
        "token_acc",
        "epoch",
        "global_step/max_steps",
        "percentage",
        "elapsed_time",
        "remaining_time",
        "memory(GiB)",
        "train_speed(s/it)",
    ] {
        assert!(train[0].get(key).is_some(), "{key} missing in {}", train[0]);
    }
    assert!(eval[0].get("eval_token_acc").is_some());
    assert_eq!(train.last().unwrap()["global_step/max_steps"], "6/6");

    // `swift infer --adapters CKPT`: the model and template come from the checkpoint's
    // args.json (load_args), the adapter is applied, and the chat answers.
    let answer = swift_with_stdin(
        &[
            "infer",
            "--adapters",
            &ck.display().to_string(),
            "--temperature",
            "0",
            "--max_new_tokens",
            "8",
        ],
        b"who are you?\n",
    );
    assert!(!answer.trim().is_empty());

    // The run folder instead of one of its checkpoints: refused, naming the newest.
    let run = ck.parent().unwrap().display().to_string();
    let (code, _, stderr) = swift(&["infer", "--adapters", &run, "--max_new_tokens", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is a run folder") && stderr.contains(&ck.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn bad_training_input_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"query\": \"hi\", \"response\": \"yo\"}\n{not json\n",
    )
    .unwrap();
    let m = model("tiny-Qwen2.5");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--dataset".into(), "/no/such.jsonl".into()],
            "/no/such.jsonl",
        ),
        (
            vec!["--dataset".into(), empty.display().to_string()],
            "empty",
        ),
        (
            vec![
                "--dataset".into(),
                broken.display().to_string(),
                "--strict".into(),
                "true".into(),
            ],
            "broken.jsonl:2",
        ),
        (
            vec![
                "--dataset".into(),
                broken.display().to_string(),
                "--train_type".into(),
                "full".into(),
                "--freeze_parameters_ratio".into(),
                "1".into(),
            ],
            "freeze_parameters",
        ),
        (
            vec![
                "--dataset".into(),
                broken.display().to_string(),
                "--target_modules".into(),
                "no_such_proj".into(),
            ],
            "target_modules",
        ),
        (
            // One checkpoint named that is not there: not a silent fresh start.
            vec![
                "--dataset".into(),
                broken.display().to_string(),
                "--resume_from_checkpoint".into(),
                dir.path()
                    .join("out/v0-x/checkpoint-9")
                    .display()
                    .to_string(),
            ],
            "checkpoint-9' names one checkpoint, but no complete checkpoint is there",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = [
            "sft",
            "--model",
            &m,
            "--output_dir",
            &out,
            "--max_steps",
            "1",
            "--split_dataset_ratio",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = swift(&refs);
        assert_eq!(code, 1, "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: expected '{needle}' in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A temporary folder with the word-reversal dataset of `rows` rows in it: the folder,
/// the dataset's path and the tiny Qwen2.5 fixture model's.
fn reverse_task(rows: usize) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    write_dataset(&data, rows);
    (dir, data.display().to_string(), model("tiny-Qwen2.5"))
}

/// A deterministic dataset big enough for a run of several dozen steps.
fn write_dataset(path: &Path, rows: usize) {
    let words = [
        "alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "zeta",
    ];
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..rows {
        let q: Vec<&str> = (0..4)
            .map(|k| words[(i * 7 + k * 3) % words.len()])
            .collect();
        let r: Vec<&str> = q.iter().rev().copied().collect();
        writeln!(
            f,
            "{}",
            serde_json::json!({"query": format!("reverse: {}", q.join(" ")), "response": r.join(" ")})
        )
        .unwrap();
    }
}

fn resume_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "sft",
        "--model",
        model,
        "--dataset",
        data,
        "--split_dataset_ratio",
        "0",
        "--max_steps",
        "40",
        "--save_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--lora_dropout",
        "0.1",
        "--learning_rate",
        "1e-3",
        "--seed",
        "7",
        // NEFTune noise and sequence accuracy ride along: their draws must resume exactly too.
        "--neftune_noise_alpha",
        "5",
        "--acc_strategy",
        "seq",
        "--report_to",
        "none",
        "--output_dir",
        out,
    ]
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_bit_identical_adapter_weights() {
    let (dir, data, m) = reverse_task(200);

    let full_out = dir.path().join("full").display().to_string();
    let (code, _, stderr) = swift(&resume_args(&m, &data, &full_out));
    assert_eq!(code, 0, "{stderr}");
    let expected = adapter_bits(&run_dir(Path::new(&full_out)).join("checkpoint-40"));
    let logs = jsonl(&run_dir(Path::new(&full_out)).join("logging.jsonl"));
    let train_lines: Vec<&Value> = logs.iter().filter(|l| l.get("loss").is_some()).collect();
    assert!(!train_lines.is_empty());
    for line in &train_lines {
        let acc = line["seq_acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{line}");
        assert!(line.get("token_acc").is_none(), "{line}");
    }

    // Kill right after a checkpoint picked at random (from the clock), steps 8 to 24.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let kill_after = 8 + 4 * (nanos % 5);
    let killed_out = dir.path().join("killed");
    let killed_str = killed_out.display().to_string();
    let mut child = swift_cmd(&resume_args(&m, &data, &killed_str))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let seen = loop {
        if let Some(run) = std::fs::read_dir(&killed_out)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
            && run.join(format!("checkpoint-{kill_after}")).is_dir()
        {
            break run;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before checkpoint-{kill_after}"
        );
        assert!(
            Instant::now() < deadline,
            "no checkpoint-{kill_after} after 300 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !seen.join("checkpoint-40").exists(),
        "the run finished before the kill"
    );

    // What a kill in the middle of a save leaves (invisible to the resume, but holding
    // disk): the resume removes it from the run it continues.
    let half_saved = seen.join(".checkpoint-999.tmp-1");
    std::fs::create_dir_all(&half_saved).unwrap();
    std::fs::write(half_saved.join("optimizer.safetensors"), b"half").unwrap();

    // Resume into a new run folder from the killed run's newest complete checkpoint.
    let resumed_out = dir.path().join("resumed").display().to_string();
    let mut args = resume_args(&m, &data, &resumed_out);
    let seen_str = seen.display().to_string();
    args.extend(["--resume_from_checkpoint", &seen_str]);
    let (code, _, stderr) = swift(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(!half_saved.exists(), "{stderr}");
    let got = adapter_bits(&run_dir(Path::new(&resumed_out)).join("checkpoint-40"));
    assert_eq!(got.len(), expected.len());
    for ((k, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            a == b,
            "{k} differs after resuming at or after step {kill_after}"
        );
    }
}

/// SIGTERM (what Kubernetes sends before it evicts or preempts a pod) mid-run: the step
/// under way finishes, a checkpoint of it is saved although none was due (`--save_steps
/// 100`), the process exits with 143 saying so, and resuming from that checkpoint ends with
/// the adapter of an uninterrupted run, bit for bit: no step's work is lost.
#[test]
fn a_sigterm_saves_the_last_step_and_the_run_resumes_bit_identically() {
    let (dir, data, m) = reverse_task(200);
    let args = |out: &'static str| -> (Vec<String>, PathBuf) {
        let root = dir.path().join(out);
        let root_s = root.display().to_string();
        let mut a: Vec<String> = resume_args(&m, &data, &root_s)
            .into_iter()
            .map(String::from)
            .collect();
        let i = a.iter().position(|x| x == "--save_steps").unwrap();
        a[i + 1] = "100".into();
        a.extend(["--logging_steps".into(), "1".into()]);
        (a, root)
    };
    fn refs(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }

    let (full_args, full_root) = args("full");
    let (code, _, stderr) = swift(&refs(&full_args));
    assert_eq!(code, 0, "{stderr}");
    let expected = adapter_bits(&run_dir(&full_root).join("checkpoint-40"));

    let (stop_args, stop_root) = args("stopped");
    let child = swift_cmd(&refs(&stop_args))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Under way: two steps logged.
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_dir(&stop_root)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| std::fs::read_to_string(e.unwrap().path().join("logging.jsonl")).ok())
        .is_none_or(|t| t.lines().count() < 2)
    {
        assert!(Instant::now() < deadline, "no training step after 300 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: our own child, still running (its output is not yet collected).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let step: u64 = stderr
        .split("stopped by SIGTERM after step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop message: {stderr}"));
    assert!((2..40).contains(&step), "stopped after step {step}");
    let run = run_dir(&stop_root);
    let saved = run.join(format!("checkpoint-{step}"));
    assert!(
        stderr.contains(&format!("saved {}", saved.display())),
        "{stderr}"
    );
    let checkpoints: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints, [format!("checkpoint-{step}")]);

    let (mut resume_args, resumed_root) = args("resumed");
    resume_args.extend([
        "--resume_from_checkpoint".into(),
        saved.display().to_string(),
    ]);
    let (code, _, stderr) = swift(&refs(&resume_args));
    assert_eq!(code, 0, "{stderr}");
    let got = adapter_bits(&run_dir(&resumed_root).join("checkpoint-40"));
    assert_eq!(got.len(), expected.len());
    for ((k, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            a == b,
            "{k} differs after stopping at step {step} and resuming"
        );
    }
}

/// Under the operator (`KUBESWIFT_PROGRESS_TOKEN` set) rank 0 leaves its final report as the
/// termination message: the last step, the loss and the last complete checkpoint
/// (operator/PROGRESS.md). Off-cluster nothing is written.
#[test]
fn under_the_operator_the_final_report_is_the_termination_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reverse.jsonl");
    write_dataset(&data, 16);
    let log = tmp.path().join("termination-log");
    let out = tmp.path().join("out");
    let model = model("tiny-Qwen2.5");
    let (data_s, out_s) = (data.display().to_string(), out.display().to_string());
    let mut args = resume_args(&model, &data_s, &out_s);
    let steps = args.iter().position(|a| *a == "--max_steps").unwrap();
    args[steps + 1] = "6";
    let status = swift_cmd(&args)
        .env("KUBESWIFT_PROGRESS_TOKEN", "t0ken")
        .env("KUBESWIFT_PROGRESS_PORT", "0")
        .env("KUBESWIFT_TERMINATION_LOG", &log)
        .status()
        .unwrap();
    assert!(status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(report["version"], 1);
    assert_eq!(report["step"], 6);
    assert_eq!(report["total_steps"], 6);
    assert_eq!(report["finished"], true);
    assert!(report["loss"].as_f64().unwrap().is_finite(), "{report}");
    assert!(
        report.get("error").is_none(),
        "a successful run reports no error: {report}"
    );
    let checkpoint = report["checkpoint"].as_str().unwrap();
    assert!(checkpoint.ends_with("checkpoint-6"), "{checkpoint}");
    assert!(
        Path::new(checkpoint)
            .join("adapter_model.safetensors")
            .exists()
    );

    // A failing run still leaves a finished report (step 0 here) instead of nothing.
    let bad_log = tmp.path().join("bad-termination-log");
    let status = swift_cmd(&[
        "sft",
        "--model",
        &tmp.path().join("no-such-model").display().to_string(),
        "--dataset",
        &data_s,
        "--output_dir",
        &tmp.path().join("out2").display().to_string(),
    ])
    .env("KUBESWIFT_PROGRESS_TOKEN", "t0ken")
    .env("KUBESWIFT_PROGRESS_PORT", "0")
    .env("KUBESWIFT_TERMINATION_LOG", &bad_log)
    .status()
    .unwrap();
    assert!(!status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&bad_log).unwrap()).unwrap();
    assert_eq!(report["step"], 0);
    assert_eq!(report["finished"], true);
    // ... that says why, naming the argument (the operator shows it in the job's status).
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no-such-model"),
        "the final report of a failed run names the cause: {report}"
    );
}

/// `--save_strategy no` saves nothing, not even at the end (ms-swift adds no final save
/// after `trainer.train()`); `--create_checkpoint_symlink true` links `best` and `last`
/// inside the run folder.
#[test]
fn save_strategy_no_saves_nothing_and_links_exist_only_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reverse.jsonl");
    write_dataset(&data, 24);
    let model = model("tiny-Qwen2.5");
    let data_s = data.display().to_string();
    let base = |out: &str, extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "sft",
            "--model",
            &model,
            "--dataset",
            &data_s,
            "--max_steps",
            "4",
            "--report_to",
            "none",
            "--output_dir",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = swift(&refs);
        assert_eq!(code, 0, "{stderr}");
        stderr
    };

    let no_save = tmp.path().join("no-save");
    let stderr = run(base(
        &no_save.display().to_string(),
        &["--save_strategy", "no", "--split_dataset_ratio", "0"],
    ));
    let dir = run_dir(&no_save);
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.contains("checkpoint")),
        "{entries:?}"
    );
    assert!(stderr.contains("last_model_checkpoint: None"), "{stderr}");
    let logs = jsonl(&dir.join("logging.jsonl"));
    assert_eq!(
        logs.last().unwrap()["global_step/max_steps"],
        "4/4",
        "it still trained"
    );

    let linked = tmp.path().join("linked");
    run(base(
        &linked.display().to_string(),
        &[
            "--save_steps",
            "2",
            "--eval_steps",
            "2",
            "--split_dataset_ratio",
            "0.25",
            "--create_checkpoint_symlink",
            "true",
        ],
    ));
    let dir = run_dir(&linked);
    assert_eq!(
        std::fs::read_link(dir.join("last")).unwrap(),
        PathBuf::from("checkpoint-4")
    );
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("last/trainer_state.json")).unwrap(),
    )
    .unwrap();
    let best = state["best_model_checkpoint"].as_str().unwrap();
    assert_eq!(
        std::fs::read_link(dir.join("best")).unwrap(),
        PathBuf::from(Path::new(best).file_name().unwrap())
    );
}

/// A `--save_only_model` checkpoint holds no optimizer or run state: resuming it fully says
/// so and names `--resume_only_model`, which then resumes its weights.
#[test]
fn a_weights_only_checkpoint_resumes_only_with_resume_only_model() {
    let (tmp, data, m) = reverse_task(16);
    let first = tmp.path().join("first").display().to_string();
    let run = |out: &str, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "sft",
            "--model",
            &m,
            "--dataset",
            &data,
            "--split_dataset_ratio",
            "0",
            "--max_steps",
            steps,
            "--save_steps",
            "2",
            "--report_to",
            "none",
            "--output_dir",
            out,
        ];
        args.extend(extra);
        swift(&args)
    };
    let (code, _, stderr) = run(&first, "2", &["--save_only_model", "true"]);
    assert_eq!(code, 0, "{stderr}");
    let ck = run_dir(Path::new(&first)).join("checkpoint-2");
    assert!(ck.join("adapter_model.safetensors").is_file());
    assert!(!ck.join("optimizer.safetensors").exists());
    let ck = ck.display().to_string();

    let second = tmp.path().join("second").display().to_string();
    let (code, _, stderr) = run(&second, "4", &["--resume_from_checkpoint", &ck]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("optimizer.safetensors") && stderr.contains("--resume_only_model true"),
        "{stderr}"
    );
    let third = tmp.path().join("third").display().to_string();
    let (code, _, stderr) = run(
        &third,
        "4",
        &[
            "--resume_from_checkpoint",
            &ck,
            "--resume_only_model",
            "true",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        run_dir(Path::new(&third))
            .join("checkpoint-4/adapter_model.safetensors")
            .is_file()
    );
}

/// Resuming with LoRA settings other than the checkpoint's, or as another train type, is
/// refused by name before any state is read: a narrower `--target_modules` would drop the
/// other modules' trained weights, a new `--lora_alpha` rescale them mid-run.
#[test]
fn resuming_with_other_lora_settings_or_train_type_is_refused_by_name() {
    let (tmp, data, m) = reverse_task(16);
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "sft",
            "--model",
            &m,
            "--dataset",
            &data,
            "--split_dataset_ratio",
            "0",
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--report_to",
            "none",
            "--output_dir",
            out,
        ];
        args.extend(extra);
        swift(&args)
    };
    let first = tmp.path().join("first").display().to_string();
    let (code, _, stderr) = run(&first, &[]);
    assert_eq!(code, 0, "{stderr}");
    let ck = run_dir(Path::new(&first))
        .join("checkpoint-2")
        .display()
        .to_string();
    for (extra, expected) in [
        (
            vec!["--lora_alpha", "64"],
            "lora_alpha: checkpoint '32', this run '64'",
        ),
        (
            vec!["--target_modules", "q_proj"],
            "target_modules: checkpoint '",
        ),
        (
            vec!["--lora_rank", "4"],
            "lora_rank (r): checkpoint '8', this run '4'",
        ),
        (
            vec!["--train_type", "full"],
            "is a LoRA adapter (adapter_config.json); this run is --train_type full",
        ),
    ] {
        let out = tmp.path().join("again").display().to_string();
        let mut args = vec!["--resume_from_checkpoint", ck.as_str()];
        args.extend(extra.iter().copied());
        let (code, _, stderr) = run(&out, &args);
        assert_eq!(code, 1, "{extra:?}: {stderr}");
        assert!(
            stderr.contains("--resume_from_checkpoint") && stderr.contains(expected),
            "{extra:?}: {stderr}"
        );
    }
}

/// `--init_weights pissa` trains, and every checkpoint carries ms-swift's
/// `converted/default` plain-LoRA adapter (rank 2r) beside the PiSSA one; `swift infer`
/// loads the PiSSA checkpoint (recomputing the residual base).
#[test]
fn pissa_run_saves_the_converted_adapter_and_infers() {
    let (dir, data, m) = reverse_task(16);
    let out = dir.path().join("out").display().to_string();
    let (code, _, stderr) = swift(&[
        "sft",
        "--model",
        &m,
        "--dataset",
        &data,
        "--split_dataset_ratio",
        "0",
        "--max_steps",
        "3",
        "--save_steps",
        "3",
        "--lora_rank",
        "4",
        "--init_weights",
        "pissa",
        "--report_to",
        "none",
        "--output_dir",
        &out,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let ck = run_dir(Path::new(&out)).join("checkpoint-3");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["init_lora_weights"], "pissa");
    assert_eq!(config["r"], 4);
    let converted: Value = serde_json::from_str(
        &std::fs::read_to_string(ck.join("converted/default/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(converted["init_lora_weights"], true);
    assert_eq!(converted["r"], 8);
    assert_eq!(converted["lora_alpha"].as_f64(), Some(64.0));
    let mut child = swift_cmd(&[
        "infer",
        "--adapters",
        &ck.display().to_string(),
        "--temperature",
        "0",
        "--max_new_tokens",
        "4",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

/// `--use_dora true`: checkpoints carry the trained magnitudes in PEFT's format, a resume
/// from one reaches the uninterrupted run's weights bit for bit (dropout on, so the DoRA
/// dropout path and its masks resume too), and infer and export read the checkpoint.
#[test]
fn dora_run_trains_the_magnitude_resumes_exactly_and_infers_and_merges() {
    let (dir, data, m) = reverse_task(24);
    let dora_args = |out: &str| -> Vec<String> {
        [
            "sft",
            "--model",
            m.as_str(),
            "--dataset",
            data.as_str(),
            "--split_dataset_ratio",
            "0",
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--lora_rank",
            "4",
            "--lora_dropout",
            "0.1",
            "--learning_rate",
            "1e-2",
            "--use_dora",
            "true",
            "--seed",
            "3",
            "--report_to",
            "none",
            "--output_dir",
            out,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = swift(&args);
        assert_eq!(code, 0, "{stderr}");
    };
    let full_out = dir.path().join("full").display().to_string();
    run(&dora_args(&full_out));
    let full = run_dir(Path::new(&full_out));
    let (ck3, ck6) = (full.join("checkpoint-3"), full.join("checkpoint-6"));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(ck6.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["use_dora"], true);
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    let magnitude = |ck: &Path| {
        adapter_bits(ck)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{} has no {key}", ck.display()))
    };
    assert_ne!(
        magnitude(&ck3),
        magnitude(&ck6),
        "the magnitude did not train"
    );

    let resumed_out = dir.path().join("resumed").display().to_string();
    let mut args = dora_args(&resumed_out);
    args.extend(["--resume_from_checkpoint".into(), ck3.display().to_string()]);
    run(&args);
    let got = adapter_bits(&run_dir(Path::new(&resumed_out)).join("checkpoint-6"));
    let expected = adapter_bits(&ck6);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got.len(), 3 * 14, "A, B and the magnitude of 14 layers");
    for ((k, a), (_, b)) in got.iter().zip(&expected) {
        assert!(a == b, "{k} differs after resuming at step 3");
    }

    let ck6_s = ck6.display().to_string();
    let merged = dir.path().join("merged").display().to_string();
    let (code, _, stderr) = swift(&[
        "export",
        "--adapters",
        &ck6_s,
        "--merge_lora",
        "true",
        "--output_dir",
        &merged,
    ]);
    assert_eq!(code, 0, "{stderr}");
    // Greedy answers of the unmerged adapter and of the merged model agree.
    let answer = |args: &[&str]| swift_with_stdin(args, b"reverse: alpha beta gamma delta\n");
    let common = ["--temperature", "0", "--max_new_tokens", "6"];
    let unmerged = answer(&[&["infer", "--adapters", ck6_s.as_str()][..], &common[..]].concat());
    let from_merged = answer(&[&["infer", "--model", merged.as_str()][..], &common[..]].concat());
    assert!(
        unmerged
            .lines()
            .any(|l| l.len() > "<<< ".len() && l.starts_with("<<< ")),
        "no answer: {unmerged}"
    );
    assert_eq!(unmerged, from_merged);
}

/// `--recompute_granularity selective` changes what the backward recomputes, not what is
/// computed: with LoRA dropout on (its masks must replay exactly), the adapter after a few
/// steps is bit-identical to full recomputation's and to no checkpointing's. A granularity
/// it does not know is refused by name.
#[test]
fn selective_recomputation_trains_the_same_adapter_bit_for_bit() {
    let (tmp, data, m) = reverse_task(16);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name).display().to_string();
        let mut args = vec![
            "sft",
            "--model",
            &m,
            "--dataset",
            &data,
            "--split_dataset_ratio",
            "0",
            "--max_steps",
            "3",
            "--save_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--lora_dropout",
            "0.1",
            "--learning_rate",
            "1e-3",
            "--report_to",
            "none",
            "--output_dir",
            &out,
        ];
        args.extend(extra);
        let (code, _, stderr) = swift(&args);
        assert_eq!(code, 0, "{name}: {stderr}");
        std::fs::read(run_dir(Path::new(&out)).join("checkpoint-3/adapter_model.safetensors"))
            .unwrap()
    };
    let full = run("full", &[]);
    let selective = run("selective", &["--recompute_granularity", "selective"]);
    let off = run("off", &["--gradient_checkpointing", "false"]);
    assert!(selective == full, "selective and full recomputation differ");
    assert!(
        off == full,
        "no checkpointing and full recomputation differ"
    );

    let (code, _, stderr) = swift(&[
        "sft",
        "--model",
        &m,
        "--dataset",
        &data,
        "--recompute_granularity",
        "partial",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("recompute_granularity"), "{stderr}");
}
