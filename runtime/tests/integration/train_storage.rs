//! `swift sft` with its model, dataset, output and resume point in a bucket, against the
//! real S3 server that scripts/test starts (s3s-fs on 127.0.0.1): the same checkpoints as
//! a run on local disk, `best`/`last` pointer objects only on request, the remote URI in
//! the operator's report, resume from the newest complete checkpoint of an output root,
//! and a server killed in the middle of a checkpoint upload.

use crate::storage_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubeswift_runtime::storage::checkpoint::{MANIFEST_NAME, is_complete_remote};
use kubeswift_runtime::storage::output::{child_prefixes, read_pointer};
use kubeswift_runtime::storage::resume::resolve_remote;
use kubeswift_runtime::storage::{Location, Remote};
use object_store::ObjectStoreExt;
use serde_json::Value;
use storage_support::*;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-Qwen2.5")
}

/// The same deterministic "reverse the words" rows as train_cli.rs.
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

/// `swift` with one compute thread, its own model cache and staging folder.
fn swift_cmd(args: &[String], scratch: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swift"));
    cmd.args(args)
        .env("SWIFT_LOG", "info")
        .env("RAYON_NUM_THREADS", "1")
        .env("NO_COLOR", "1")
        .env("MODELSCOPE_CACHE", scratch.join("cache"))
        .env("TMPDIR", scratch.join("tmp"));
    std::fs::create_dir_all(scratch.join("tmp")).unwrap();
    cmd
}

fn swift_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn train_args(model: &str, data: &str, out: &str, steps: u32, save_steps: u32) -> Vec<String> {
    [
        "sft",
        "--model",
        model,
        "--dataset",
        data,
        "--split_dataset_ratio",
        "0",
        "--max_steps",
        &steps.to_string(),
        "--save_steps",
        &save_steps.to_string(),
        "--per_device_train_batch_size",
        "2",
        "--lora_dropout",
        "0.1",
        "--learning_rate",
        "1e-3",
        "--seed",
        "7",
        "--report_to",
        "none",
        "--output_dir",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Tensor name -> the bit patterns of its f32 values.
fn tensor_bits(safetensors: &[u8]) -> BTreeMap<String, Vec<u32>> {
    candle_core::safetensors::load_buffer(safetensors, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let bits = v
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (k, bits)
        })
        .collect()
}

fn local_bits(ck: &Path, file: &str) -> BTreeMap<String, Vec<u32>> {
    tensor_bits(&std::fs::read(ck.join(file)).unwrap())
}

async fn remote_bytes(remote: &Remote, rel: &str) -> Vec<u8> {
    let target = remote.join(rel);
    target
        .store
        .get(&target.location.object_path())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", target.location))
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn remote_bits(ck: &Remote, file: &str) -> BTreeMap<String, Vec<u32>> {
    tensor_bits(&remote_bytes(ck, file).await)
}

/// The single `vN-*` run folder under a local output root.
fn local_run(root: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// The `vN-*` run folders under a remote output root, sorted.
async fn remote_runs(root: &Remote) -> Vec<String> {
    let mut runs = child_prefixes(root).await.unwrap();
    runs.sort_by_key(|r| {
        r.strip_prefix('v')
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
    });
    runs
}

async fn upload_folder(local: &Path, remote: &Remote) {
    for entry in std::fs::read_dir(local).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        put(remote, &name, std::fs::read(&path).unwrap()).await;
    }
}

fn assert_same(a: &BTreeMap<String, Vec<u32>>, b: &BTreeMap<String, Vec<u32>>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, v) in a {
        assert!(v == &b[k], "{what}: {k} differs");
    }
}

/// A LoRA run reading the model and a sampled dataset from the bucket and writing its
/// output there produces the local run's checkpoints bit for bit; its report and log name
/// the remote checkpoint; pointers exist only with `--create_checkpoint_symlink`. Resuming
/// from the output root skips a checkpoint without a manifest and ends on the same weights;
/// an empty prefix starts fresh, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_the_bucket_matches_local_disk_and_resumes_from_the_output_root() {
    let Some(bucket) = bucket() else { return };
    let base = unique_uri(&bucket, "train-bucket");
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let data = s.join("reverse.jsonl");
    write_dataset(&data, 40);
    let model_uri = format!("{base}/models/tiny-Qwen2.5");
    upload_folder(&model_dir(), &open(&model_uri)).await;
    let data_uri = format!("{base}/data/reverse.jsonl");
    put(&open(&data_uri), "", std::fs::read(&data).unwrap()).await;

    // The reference: everything on local disk. `#30` samples 30 of the 40 rows.
    let local_out = s.join("local");
    let local_data = format!("{}#30", data.display());
    let model_path = model_dir().display().to_string();
    swift_ok(&mut swift_cmd(
        &train_args(
            &model_path,
            &local_data,
            &local_out.display().to_string(),
            6,
            3,
        ),
        s,
    ));
    let reference_run = local_run(&local_out);

    // The same run from and to the bucket, under the operator's progress settings.
    let out_uri = format!("{base}/out");
    let termination = s.join("termination-log");
    let stderr = swift_ok(
        swift_cmd(
            &with(
                train_args(&model_uri, &format!("{data_uri}#30"), &out_uri, 6, 3),
                &["--create_checkpoint_symlink", "true"],
            ),
            s,
        )
        .env("KUBESWIFT_PROGRESS_TOKEN", "t0ken")
        .env("KUBESWIFT_PROGRESS_PORT", "0")
        .env("KUBESWIFT_TERMINATION_LOG", &termination),
    );
    let out = open(&out_uri);
    let runs = remote_runs(&out).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = out.join(&runs[0]);
    for step in [3, 6] {
        let name = format!("checkpoint-{step}");
        let ck = run.join(&name);
        assert!(is_complete_remote(&ck).await.unwrap(), "{name}");
        for file in ["adapter_model.safetensors", "optimizer.safetensors"] {
            assert_same(
                &remote_bits(&ck, file).await,
                &local_bits(&reference_run.join(&name), file),
                &format!("{name}/{file}"),
            );
        }
    }
    let last_uri = run.join("checkpoint-6").location.to_string();
    assert!(
        stderr.contains(&format!("last_model_checkpoint: {last_uri}")),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(report["checkpoint"], last_uri.as_str(), "{report}");
    assert_eq!(
        read_pointer(&run, "last").await.unwrap().as_deref(),
        Some("checkpoint-6")
    );
    let logged = String::from_utf8(remote_bytes(&run, "logging.jsonl").await).unwrap();
    assert!(
        logged.contains("\"global_step/max_steps\":\"6/6\""),
        "{logged}"
    );
    // The local run had no --create_checkpoint_symlink.
    assert!(std::fs::symlink_metadata(reference_run.join("last")).is_err());

    // Without the flag no pointer object is written either; and the newest checkpoint of
    // that run loses its manifest (an upload cut short), so resume must skip it.
    let out2_uri = format!("{base}/out2");
    swift_ok(&mut swift_cmd(
        &train_args(&model_uri, &format!("{data_uri}#30"), &out2_uri, 6, 3),
        s,
    ));
    let out2 = open(&out2_uri);
    let run2 = out2.join(&remote_runs(&out2).await[0]);
    assert_eq!(read_pointer(&run2, "last").await.unwrap(), None);
    let manifest = run2.join("checkpoint-6").join(MANIFEST_NAME);
    manifest
        .store
        .delete(&manifest.location.object_path())
        .await
        .unwrap();
    let point = resolve_remote(&out2).await.unwrap().unwrap();
    assert_eq!(
        point.location,
        Location::Remote(run2.join("checkpoint-3").location)
    );

    // Resume the way the operator restarts a job: the output root is also the resume point.
    let stderr = swift_ok(&mut swift_cmd(
        &with(
            train_args(&model_uri, &format!("{data_uri}#30"), &out2_uri, 6, 3),
            &["--resume_from_checkpoint", &out2_uri],
        ),
        s,
    ));
    let resumed_from = run2.join("checkpoint-3").location.to_string();
    assert!(
        stderr.contains("resuming") && stderr.contains(&resumed_from),
        "{stderr}"
    );
    let runs2 = remote_runs(&out2).await;
    assert_eq!(runs2.len(), 2, "{runs2:?}");
    let resumed = out2.join(&runs2[1]);
    assert!(
        !is_complete_remote(&resumed.join("checkpoint-3"))
            .await
            .unwrap(),
        "the resumed run starts after step 3"
    );
    assert_same(
        &remote_bits(&resumed.join("checkpoint-6"), "adapter_model.safetensors").await,
        &local_bits(
            &reference_run.join("checkpoint-6"),
            "adapter_model.safetensors",
        ),
        "resumed checkpoint-6",
    );

    // A prefix with nothing under it, named as the resume point of another output: a
    // wrong path, refused before any training.
    let empty_uri = format!("{base}/nothing-here");
    let fresh_out = s.join("fresh").display().to_string();
    let output = swift_cmd(
        &with(
            train_args(&model_path, &local_data, &fresh_out, 6, 6),
            &["--resume_from_checkpoint", &empty_uri],
        ),
        s,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&empty_uri) && stderr.contains("holds no complete checkpoint"),
        "{stderr}"
    );
    assert!(!s.join("fresh").exists(), "nothing was trained or written");

    // The same empty prefix as the run's own output root: a job's first start, said in
    // the log.
    let stderr = swift_ok(&mut swift_cmd(
        &with(
            train_args(&model_path, &local_data, &fresh_out, 6, 6),
            &["--resume_from_checkpoint", &fresh_out],
        ),
        s,
    ));
    assert!(stderr.contains("starting fresh"), "{stderr}");
    assert_same(
        &local_bits(
            &local_run(&s.join("fresh")).join("checkpoint-6"),
            "adapter_model.safetensors",
        ),
        &local_bits(
            &reference_run.join("checkpoint-6"),
            "adapter_model.safetensors",
        ),
        "fresh checkpoint-6",
    );

    // `--adapters` from the bucket: the checkpoint is fetched (manifest-checked) and
    // training continues from it.
    let adapter_uri = run.join("checkpoint-6").location.to_string();
    let stderr = swift_ok(&mut swift_cmd(
        &with(
            train_args(
                &model_uri,
                &format!("{data_uri}#30"),
                &s.join("more").display().to_string(),
                1,
                1,
            ),
            &["--adapters", &adapter_uri],
        ),
        s,
    ));
    assert!(
        stderr.contains(&format!("downloading {adapter_uri}")),
        "{stderr}"
    );

    // Inputs that are not there: one clear error naming the URI, no panic.
    for (arg, uri) in [
        ("--model", format!("{base}/models/missing")),
        ("--dataset", format!("{base}/data/missing.jsonl#3")),
        ("--adapters", format!("{base}/out/missing/checkpoint-1")),
    ] {
        let mut args = train_args(
            &model_uri,
            &data_uri,
            &s.join("bad").display().to_string(),
            1,
            1,
        );
        match args.iter().position(|a| a == arg) {
            Some(i) => args[i + 1] = uri.clone(),
            None => args.extend([arg.to_string(), uri.clone()]),
        }
        let out = swift_cmd(&args, s).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{arg}: {stderr}");
        let named = uri.split('#').next().unwrap();
        assert!(
            stderr.contains(named) && stderr.contains(arg),
            "{arg}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// `checkpoint-STEP` folders the server holds on disk under `root` (any run).
fn server_checkpoint_dir(root: &Path, step: u32) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("checkpoint-{step}")))
        .find(|p| {
            std::fs::read_dir(p)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        })
}

/// The S3 server dies while a checkpoint uploads: training stops with an error naming
/// that checkpoint, the half-uploaded prefix is never taken as complete, and a resumed
/// run (from the output root, after a restart) continues from the previous checkpoint
/// and ends bit-identical to an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_then_resume_ends_bit_identical() {
    let Some(_) = bucket() else { return };
    let Some(mut server) = PrivateServer::start("faults") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let data = s.join("reverse.jsonl");
    write_dataset(&data, 40);
    let data = data.display().to_string();
    let model = model_dir().display().to_string();
    let (steps, every) = (16, 2);

    let reference = s.join("reference");
    swift_ok(&mut swift_cmd(
        &train_args(
            &model,
            &data,
            &reference.display().to_string(),
            steps,
            every,
        ),
        s,
    ));
    let expected = local_bits(
        &local_run(&reference).join(format!("checkpoint-{steps}")),
        "adapter_model.safetensors",
    );

    let out_uri = "s3://faults/out";
    let endpoint = server.endpoint();
    let to_server = |cmd: &mut Command| {
        cmd.env("AWS_ENDPOINT_URL", &endpoint)
            .env("KUBESWIFT_STORAGE_MAX_RETRIES", "1")
            .env("KUBESWIFT_STORAGE_RETRY_TIMEOUT_SECS", "2");
    };
    let mut cmd = swift_cmd(&train_args(&model, &data, out_uri, steps, every), s);
    to_server(&mut cmd);
    // stderr to a file: a pipe nobody reads while we watch could fill and block the run.
    let log_path = s.join("interrupted.log");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Freeze the trainer as soon as a checkpoint's first object is on the server's disk;
    // if its manifest is already there too the upload was quicker than us: let it go on
    // and try the next checkpoint. Otherwise kill the server under the frozen upload.
    let on_disk = server.data.path().join("faults/out");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut cut = None;
    // From the second checkpoint on, so there is a complete one to fall back to.
    'steps: for step in (2 * every..steps).step_by(every as usize) {
        loop {
            assert!(
                Instant::now() < deadline,
                "no checkpoint-{step} upload seen"
            );
            if child.try_wait().unwrap().is_some() {
                break 'steps;
            }
            if let Some(dir) = server_checkpoint_dir(&on_disk, step) {
                signal(child.id(), "-STOP");
                if dir.join(MANIFEST_NAME).exists() {
                    signal(child.id(), "-CONT");
                    continue 'steps;
                }
                cut = Some(step);
                break 'steps;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let Some(cut) = cut else {
        let _ = child.kill();
        panic!("every checkpoint upload finished before the test could interrupt it");
    };
    server.kill();
    signal(child.id(), "-CONT");
    eprintln!("the server died under the upload of checkpoint-{cut}");
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log_path).unwrap();
    assert!(!status.success(), "training went on without its bucket");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(out_uri) && stderr.contains(&format!("checkpoint-{cut}")),
        "the error should name the checkpoint being uploaded: {stderr}"
    );

    server.restart();
    let root = Remote::open_with(&remote_loc(out_uri), &server.config()).unwrap();
    let run = root.join(&remote_runs(&root).await[0]);
    // The server may still have finished the manifest PUT that was in flight when the
    // trainer froze; then the checkpoint is complete and valid. Otherwise it must not be
    // taken: resume falls back to the one before.
    let interrupted = run.join(&format!("checkpoint-{cut}"));
    let resume_step = if is_complete_remote(&interrupted).await.unwrap() {
        eprintln!("checkpoint-{cut}: the in-flight manifest landed before the kill");
        cut
    } else {
        cut - every
    };
    let previous = run.join(&format!("checkpoint-{resume_step}"));
    assert_eq!(
        resolve_remote(&root).await.unwrap().unwrap().location,
        Location::Remote(previous.location.clone())
    );

    // Restart the job as the operator does: the output root is the resume point.
    let mut cmd = swift_cmd(
        &with(
            train_args(&model, &data, out_uri, steps, every),
            &["--resume_from_checkpoint", out_uri],
        ),
        s,
    );
    to_server(&mut cmd);
    let stderr = swift_ok(&mut cmd);
    assert!(
        stderr.contains(&previous.location.to_string()),
        "resumed from the wrong place: {stderr}"
    );
    let runs = remote_runs(&root).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let got = remote_bits(
        &root.join(&runs[1]).join(&format!("checkpoint-{steps}")),
        "adapter_model.safetensors",
    )
    .await;
    assert_same(&got, &expected, "after the interrupted upload and resume");
}
