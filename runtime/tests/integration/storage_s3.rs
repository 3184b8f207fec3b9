//! Storage against a real S3 server on 127.0.0.1 (s3s-fs, started by scripts/test):
//! round trips, the model cache, resumed and concurrent downloads, dataset streaming with
//! flat memory, complete-or-invisible checkpoint uploads under faults, resume resolution,
//! rotation and pointers, and the errors users see for bad input.

use crate::storage_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kubeswift_runtime::storage::cache::Cache;
use kubeswift_runtime::storage::checkpoint::{
    LocalCheckpoint, MANIFEST_NAME, UploadOptions, is_complete_remote, upload_checkpoint,
};
use kubeswift_runtime::storage::dataset::{LineIter, Shard, StreamOptions, stream_remote_lines};
use kubeswift_runtime::storage::download::DownloadOptions;
use kubeswift_runtime::storage::output::{RunFileSync, RunOutput, child_prefixes, read_pointer};
use kubeswift_runtime::storage::resume::resolve_remote;
use kubeswift_runtime::storage::{Location, Remote, StorageError, StoreConfig};
use object_store::{ObjectStore, ObjectStoreExt};
use storage_support::*;

const MIB: usize = 1 << 20;

fn small_chunks() -> DownloadOptions {
    DownloadOptions {
        chunk_size: 4 << 20,
        concurrency: 4,
        chunk_attempts: 2,
    }
}

fn small_parts() -> UploadOptions {
    UploadOptions {
        multipart_threshold: 8 << 20,
        part_size: 5 << 20,
        part_concurrency: 4,
        file_concurrency: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_round_trip_then_cache_hit_then_etag_change() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "model");
    let remote = open(&uri);
    let files = [
        ("config.json", br#"{"model_type":"qwen2"}"#.to_vec()),
        ("model.safetensors", bytes(21 * MIB + 123, 1)),
        ("sub/tokenizer.json", bytes(3000, 2)),
    ];
    for (rel, content) in &files {
        put(&remote, rel, content.clone()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path()).with_options(small_chunks());

    let first = cache.materialize_remote(&remote).await.unwrap();
    assert_eq!(first.files_downloaded, 3);
    assert_eq!(
        first.bytes_fetched,
        files.iter().map(|f| f.1.len() as u64).sum::<u64>()
    );
    for (rel, content) in &files {
        assert_eq!(
            &std::fs::read(first.path.join(rel)).unwrap(),
            content,
            "{rel}"
        );
    }

    let hit = cache.materialize_remote(&remote).await.unwrap();
    assert_eq!(
        (hit.files_downloaded, hit.bytes_fetched, hit.files_cached),
        (0, 0, 3)
    );

    // Same size, new content: only the ETag tells, and only that file is fetched again.
    let replaced = bytes(3000, 99);
    put(&remote, "sub/tokenizer.json", replaced.clone()).await;
    let again = cache.materialize_remote(&remote).await.unwrap();
    assert_eq!((again.files_downloaded, again.bytes_fetched), (1, 3000));
    assert_eq!(
        std::fs::read(again.path.join("sub/tokenizer.json")).unwrap(),
        replaced
    );

    // A single object materializes as a file.
    let single = cache
        .materialize_remote(&remote.join("config.json"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&single.path).unwrap(), files[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_from_finished_chunks() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "resume-dl");
    let remote = open(&uri);
    let content = bytes(30 * MIB + 7, 3);
    put(&remote, "model.safetensors", content.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path()).with_options(DownloadOptions {
        concurrency: 1,
        ..small_chunks()
    });

    // The connection "drops" after 3 ranged GETs: the download fails part-way.
    let mut faulty = FaultyStore::new(remote.store.clone());
    faulty.gets_allowed = 3;
    let broken = Remote::with_store(Arc::new(faulty), remote.location.clone());
    let err = cache.materialize_remote(&broken).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let local = cache.local_path(&remote.location).join("model.safetensors");
    assert!(
        !local.exists(),
        "an incomplete file must not appear under its real name"
    );

    let resumed = cache.materialize_remote(&remote).await.unwrap();
    assert_eq!(resumed.chunks_reused, 3);
    assert_eq!(
        resumed.bytes_fetched,
        content.len() as u64 - 3 * 4 * MIB as u64
    );
    assert_eq!(std::fs::read(&local).unwrap(), content);
}

/// Child half of `two_processes_download_once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_processes_download_once in a child process"]
async fn helper_materialize_child() {
    let uri = std::env::var("CHILD_URI").unwrap();
    let cache = Cache::new(std::env::var("CHILD_CACHE").unwrap()).with_options(small_chunks());
    let report = cache.materialize_remote(&open(&uri)).await.unwrap();
    println!("FETCHED={}", report.bytes_fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_download_once() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "two-procs");
    let remote = open(&uri);
    let content = bytes(24 * MIB, 4);
    put(&remote, "model.safetensors", content.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CHILD_URI", uri.clone()),
        ("CHILD_CACHE", dir.path().display().to_string()),
    ];
    let children = [
        spawn_helper("storage_s3::helper_materialize_child", &env),
        spawn_helper("storage_s3::helper_materialize_child", &env),
    ];
    let mut fetched = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        fetched.push(reported(&String::from_utf8_lossy(&out.stdout), "FETCHED"));
    }
    fetched.sort();
    assert_eq!(
        fetched,
        vec![0, content.len() as u64],
        "exactly one process downloads"
    );
    let path = Cache::new(dir.path())
        .local_path(&remote.location)
        .join("model.safetensors");
    assert_eq!(std::fs::read(path).unwrap(), content);
}

/// Child half of `streaming_a_large_dataset_keeps_memory_flat`: streams the dataset and
/// reports its peak RSS after a warm-up and at the end.
#[test]
#[ignore = "run by streaming_a_large_dataset_keeps_memory_flat in a child process"]
fn helper_stream_child() {
    let uri = std::env::var("CHILD_URI").unwrap();
    let remote = open(&uri);
    let mut lines = 0u64;
    let mut bytes_seen = 0u64;
    let mut warm_rss = 0;
    let mut last_number = 0;
    for line in LineIter::open_remote(remote, Shard::WHOLE, StreamOptions::default()).unwrap() {
        let line = line.unwrap();
        lines += 1;
        bytes_seen += line.text.len() as u64 + 1;
        last_number = line.number.unwrap();
        if lines == 20_000 {
            warm_rss = peak_rss();
        }
    }
    println!(
        "LINES={lines}\nBYTES={bytes_seen}\nLAST={last_number}\nWARM_RSS={warm_rss}\nPEAK_RSS={}",
        peak_rss()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_large_dataset_keeps_memory_flat() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "big.jsonl");
    let remote = open(&uri);
    // ~160 MB of JSON lines, uploaded in parts without holding it all at once.
    let line_count = 400_000u64;
    let mut upload = object_store::WriteMultipart::new_with_chunk_size(
        remote
            .store
            .put_multipart(&remote.location.object_path())
            .await
            .unwrap(),
        8 * MIB,
    );
    let mut total = 0u64;
    let mut buf = String::new();
    for i in 0..line_count {
        use std::fmt::Write;
        writeln!(
            buf,
            r#"{{"messages":[{{"role":"user","content":"q{i} {}"}}]}}"#,
            "x".repeat(350)
        )
        .unwrap();
        if buf.len() > 4 * MIB {
            total += buf.len() as u64;
            upload.wait_for_capacity(4).await.unwrap();
            upload.write(std::mem::take(&mut buf).as_bytes());
        }
    }
    total += buf.len() as u64;
    upload.write(buf.as_bytes());
    upload.finish().await.unwrap();

    let child = spawn_helper(
        "storage_s3::helper_stream_child",
        &[("CHILD_URI", uri.clone())],
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(reported(&out, "LINES"), line_count);
    assert_eq!(reported(&out, "LAST"), line_count);
    assert_eq!(reported(&out, "BYTES"), total);
    let (warm, peak) = (reported(&out, "WARM_RSS"), reported(&out, "PEAK_RSS"));
    eprintln!(
        "dataset {} MB, child peak RSS {} MB (after warm-up {} MB)",
        total >> 20,
        peak >> 20,
        warm >> 20
    );
    // Measured here: ~31 MB peak while streaming ~160 MB; 3x leaves CI some margin.
    assert!(
        peak * 3 < total,
        "peak RSS {peak} is not far below the dataset's {total} bytes"
    );
    assert!(
        peak - warm < 32 << 20,
        "RSS grew by {} bytes while streaming",
        peak - warm
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_a_remote_file_partition_its_lines() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "shards.jsonl");
    let remote = open(&uri);
    let text: String = (0..5000)
        .map(|i| format!("{{\"i\":{i},\"p\":\"{}\"}}\n", "y".repeat(i % 37)))
        .collect();
    put(&remote, "", text.clone().into_bytes()).await;
    let meta = remote
        .store
        .head(&remote.location.object_path())
        .await
        .unwrap();
    let opts = StreamOptions {
        block_size: 4096,
        ..Default::default()
    };
    let mut seen = Vec::new();
    for rank in 0..3 {
        let shard = Shard::new(rank, 3).unwrap();
        let range = shard.byte_range(meta.size);
        let lines: Vec<_> = stream_remote_lines(remote.clone(), meta.clone(), shard, opts)
            .collect()
            .await;
        for line in lines {
            let line = line.unwrap();
            assert!(range.contains(&line.offset));
            seen.push(line.json_object(&uri).unwrap()["i"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (0..5000).collect::<Vec<u64>>());
}

/// A committed local checkpoint with a few files, large enough for multipart uploads.
async fn local_checkpoint(run: &std::path::Path, step: u64, seed: u64) -> std::path::PathBuf {
    let ck = LocalCheckpoint::begin(run, step).await.unwrap();
    write_tree(
        ck.dir(),
        &[
            ("adapter_model.safetensors", bytes(18 * MIB + 5, seed)),
            ("optimizer.pt", bytes(12 * MIB, seed + 1)),
            ("adapter_config.json", br#"{"r":8}"#.to_vec()),
            (
                "trainer_state.json",
                format!(r#"{{"global_step":{step}}}"#).into_bytes(),
            ),
        ],
    );
    ck.commit().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_or_cancelled_checkpoint_uploads_never_look_complete() {
    let Some(bucket) = bucket() else { return };
    let run_uri = unique_uri(&bucket, "ckpt-faults");
    let run = open(&run_uri);
    let local = tempfile::tempdir().unwrap();
    let ck1 = local_checkpoint(local.path(), 1, 10).await;
    let ck2 = local_checkpoint(local.path(), 2, 20).await;
    upload_checkpoint(&ck1, &run.join("checkpoint-1"), &small_parts())
        .await
        .unwrap();

    // 1. A request fails (after retries): the error names the object, no manifest appears.
    let mut faulty = FaultyStore::new(run.store.clone());
    faulty.fail_put_suffix = Some("trainer_state.json".into());
    let broken = Remote::with_store(Arc::new(faulty), run.location.clone());
    let err = upload_checkpoint(&ck2, &broken.join("checkpoint-2"), &small_parts())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("checkpoint-2/trainer_state.json"),
        "{err}"
    );
    assert!(!is_complete_remote(&run.join("checkpoint-2")).await.unwrap());
    assert_newest(&run, "checkpoint-1").await;

    // 2. The upload is cancelled (pod killed) once its first object is in the bucket.
    let upload = tokio::spawn({
        let target = run.join("checkpoint-2");
        async move { upload_checkpoint(&ck2, &target, &small_parts()).await }
    });
    wait_for_any_object(
        &run.join("checkpoint-2/adapter_model.safetensors"),
        &run.join("checkpoint-2"),
    )
    .await;
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());
    assert!(!is_complete_remote(&run.join("checkpoint-2")).await.unwrap());
    assert_newest(&run, "checkpoint-1").await;

    // 3. Re-uploading finishes it; now it is the newest.
    let ck2 = local.path().join("checkpoint-2");
    upload_checkpoint(&ck2, &run.join("checkpoint-2"), &small_parts())
        .await
        .unwrap();
    assert_newest(&run, "checkpoint-2").await;
}

async fn assert_newest(root: &Remote, name: &str) {
    let point = resolve_remote(root).await.unwrap().unwrap();
    assert_eq!(point.location, Location::Remote(root.location.join(name)));
}

/// Waits until something exists under `prefix` (or the object `probe` exists).
async fn wait_for_any_object(probe: &Remote, prefix: &Remote) {
    for _ in 0..400 {
        let listed = prefix
            .store
            .list(Some(&prefix.location.object_path()))
            .next()
            .await;
        if matches!(listed, Some(Ok(_)))
            || probe
                .store
                .head(&probe.location.object_path())
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing was uploaded under {}", prefix.location);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_during_upload_then_resume_takes_the_previous_checkpoint() {
    let Some(_) = bucket() else { return };
    let Some(mut server) = PrivateServer::start("faults") else {
        return;
    };
    let cfg = server.config();
    let run = Remote::open_with(
        &remote_loc("s3://faults/runs/exp1/v0-20250101-000000"),
        &cfg,
    )
    .unwrap();
    let root = Remote::open_with(&remote_loc("s3://faults/runs/exp1"), &cfg).unwrap();
    let local = tempfile::tempdir().unwrap();
    let ck1 = local_checkpoint(local.path(), 1, 30).await;
    let ck2 = local_checkpoint(local.path(), 2, 40).await;
    upload_checkpoint(&ck1, &run.join("checkpoint-1"), &small_parts())
        .await
        .unwrap();

    let upload = tokio::spawn({
        let target = run.join("checkpoint-2");
        let ck2 = ck2.clone();
        async move { upload_checkpoint(&ck2, &target, &small_parts()).await }
    });
    wait_for_any_object(
        &run.join("checkpoint-2/adapter_config.json"),
        &run.join("checkpoint-2"),
    )
    .await;
    server.kill();
    let err = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("s3://faults/runs/exp1/v0-20250101-000000/checkpoint-2"),
        "{err}"
    );

    server.restart();
    assert!(!is_complete_remote(&run.join("checkpoint-2")).await.unwrap());
    let point = resolve_remote(&root).await.unwrap().unwrap();
    assert_eq!(point.step, Some(1));
    assert_eq!(
        point.location,
        Location::Remote(run.location.join("checkpoint-1"))
    );

    // What resume downloads is bit-identical to what was saved.
    let cache_dir = tempfile::tempdir().unwrap();
    let fetched = Cache::new(cache_dir.path())
        .materialize_remote(&run.join("checkpoint-1"))
        .await
        .unwrap();
    for name in [
        "adapter_model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
        MANIFEST_NAME,
    ] {
        assert_eq!(
            std::fs::read(fetched.path.join(name)).unwrap(),
            std::fs::read(ck1.join(name)).unwrap(),
            "{name}"
        );
    }

    // Retrying the interrupted upload after the restart completes it.
    upload_checkpoint(&ck2, &run.join("checkpoint-2"), &small_parts())
        .await
        .unwrap();
    assert_eq!(resolve_remote(&root).await.unwrap().unwrap().step, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_resolution_picks_the_newest_complete_checkpoint() {
    let Some(bucket) = bucket() else { return };
    let root_uri = unique_uri(&bucket, "resume");
    let root = open(&root_uri);
    let local = tempfile::tempdir().unwrap();
    let opts = small_parts();
    let ck = local_checkpoint(local.path(), 7, 50).await;
    for dir in [
        "v0-20250101-000000/checkpoint-100",
        "v0-20250101-000000/checkpoint-200",
        "v1-20250102-000000/checkpoint-50",
    ] {
        upload_checkpoint(&ck, &root.join(dir), &opts)
            .await
            .unwrap();
    }
    // v1's checkpoint-300 lost its last file; v2 has only logs; v1's checkpoint-400 has a
    // manifest whose sizes do not match.
    upload_checkpoint(&ck, &root.join("v1-20250102-000000/checkpoint-300"), &opts)
        .await
        .unwrap();
    root.store
        .delete(
            &root
                .location
                .join("v1-20250102-000000/checkpoint-300/optimizer.pt")
                .object_path(),
        )
        .await
        .unwrap();
    upload_checkpoint(&ck, &root.join("v1-20250102-000000/checkpoint-400"), &opts)
        .await
        .unwrap();
    put(
        &root,
        "v1-20250102-000000/checkpoint-400/adapter_config.json",
        b"{}".to_vec(),
    )
    .await;
    put(&root, "v2-20250103-000000/logging.jsonl", b"{}\n".to_vec()).await;

    let newest = resolve_remote(&root).await.unwrap().unwrap();
    assert_eq!(
        newest.location,
        Location::Remote(root.location.join("v1-20250102-000000/checkpoint-50"))
    );
    assert_eq!(newest.step, Some(50));
    let in_run = resolve_remote(&root.join("v0-20250101-000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_run.step, Some(200));
    let explicit = resolve_remote(&root.join("v0-20250101-000000/checkpoint-100"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(explicit.step, Some(100));

    // Naming an incomplete checkpoint is an error, not a silent fresh start.
    let err = resolve_remote(&root.join("v1-20250102-000000/checkpoint-300"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checkpoint-300"), "{err}");
    // An empty or missing prefix means: start fresh.
    assert_eq!(
        resolve_remote(&root.join("v2-20250103-000000"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        resolve_remote(&open(&unique_uri(&bucket, "nothing-here")))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_output_rotates_points_and_syncs_logs_remotely() {
    let Some(bucket) = bucket() else { return };
    let out_uri = unique_uri(&bucket, "output");
    let out_root = open(&out_uri);
    put(&out_root, "v0-20250101-000000/args.json", b"{}".to_vec()).await;
    put(&out_root, "v4-20250101-000000/args.json", b"{}".to_vec()).await;
    let staging = tempfile::tempdir().unwrap();
    let mut run = RunOutput::create_remote(out_root.clone(), staging.path(), "20250105-101010")
        .await
        .unwrap();
    run.upload = small_parts();
    let remote_run = run.remote.clone().unwrap();
    assert_eq!(
        remote_run.location,
        out_root.location.join("v5-20250105-101010")
    );

    for step in [10, 20, 30] {
        let ck = local_checkpoint(&run.local, step, step).await;
        run.publish_checkpoint(&ck, Some(2), Some("checkpoint-10"), true)
            .await
            .unwrap();
    }
    let mut remote_cks: Vec<String> = child_prefixes(&remote_run).await.unwrap();
    remote_cks.sort();
    assert_eq!(
        remote_cks,
        ["checkpoint-10", "checkpoint-30"],
        "best is kept, the oldest other goes"
    );
    assert!(!run.local.join("checkpoint-20").exists());
    assert_eq!(
        read_pointer(&remote_run, "last").await.unwrap().as_deref(),
        Some("checkpoint-30")
    );
    assert_eq!(
        read_pointer(&remote_run, "best").await.unwrap().as_deref(),
        Some("checkpoint-10")
    );
    assert_eq!(
        std::fs::read_link(run.local.join("last")).unwrap(),
        std::path::PathBuf::from("checkpoint-30")
    );
    // `--resume_from_checkpoint .../last` follows the pointer.
    let point = resolve_remote(&remote_run.join("last"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(point.step, Some(30));

    std::fs::write(run.local.join("args.json"), "{}").unwrap();
    std::fs::write(run.local.join("logging.jsonl"), "{\"loss\":1}\n").unwrap();
    std::fs::create_dir_all(run.local.join("runs")).unwrap();
    std::fs::write(run.local.join("runs/events.out.tfevents.1"), "e").unwrap();
    let handle =
        RunFileSync::new(run.local.clone(), remote_run.clone()).spawn(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        run.local.join("logging.jsonl"),
        "{\"loss\":1}\n{\"loss\":0.5}\n",
    )
    .unwrap();
    handle.stop().await.unwrap();
    let logged = remote_run
        .store
        .get(&remote_run.location.join("logging.jsonl").object_path())
        .await
        .unwrap();
    assert_eq!(
        logged.bytes().await.unwrap().as_ref(),
        b"{\"loss\":1}\n{\"loss\":0.5}\n"
    );
    let events = remote_run
        .location
        .join("runs/events.out.tfevents.1")
        .object_path();
    assert!(remote_run.store.head(&events).await.is_ok());
    let mut sync = RunFileSync::new(run.local.clone(), remote_run.clone());
    assert_eq!(sync.sync_once().await.unwrap(), 3);
    assert_eq!(
        sync.sync_once().await.unwrap(),
        0,
        "unchanged files are not uploaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors_naming_the_uri() {
    let Some(bucket) = bucket() else { return };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let cfg = StoreConfig::from_env().with_var("KUBESWIFT_STORAGE_MAX_RETRIES", "1");

    let missing_bucket =
        Remote::open_with(&remote_loc("s3://no-such-bucket-kubeswift/models/x"), &cfg).unwrap();
    let err = cache.materialize_remote(&missing_bucket).await.unwrap_err();
    assert!(
        matches!(err, StorageError::BucketNotFound { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("s3://no-such-bucket-kubeswift/models/x"),
        "{err}"
    );

    let wrong = cfg
        .clone()
        .with_var("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let uri = format!("s3://{bucket}/models/x");
    let err = cache
        .materialize_remote(&Remote::open_with(&remote_loc(&uri), &wrong).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err:?}");
    assert!(err.to_string().contains(&uri), "{err}");

    let missing = unique_uri(&bucket, "missing-model");
    let err = cache.materialize_remote(&open(&missing)).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");

    let err = cache
        .materialize("hdfs://namenode/models/x")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("hdfs://namenode/models/x"),
        "{err}"
    );

    // A binary file named .jsonl: the stream stops with file and line in the message.
    let not_jsonl = unique_uri(&bucket, "weights.jsonl");
    let remote = open(&not_jsonl);
    let mut junk = b"{\"ok\":1}\n".to_vec();
    junk.extend_from_slice(&[0xff, 0x00, 0x13, b'\n']);
    put(&remote, "", junk).await;
    let items: Vec<_> =
        LineIter::open_remote(remote.clone(), Shard::WHOLE, StreamOptions::default())
            .unwrap()
            .collect();
    assert_eq!(items.len(), 2);
    let err = items[1].as_ref().unwrap_err().to_string();
    assert!(
        err.contains(&not_jsonl) && err.contains("line 2") && err.contains("UTF-8"),
        "{err}"
    );
    let not_json = unique_uri(&bucket, "text.jsonl");
    put(&open(&not_json), "", b"hello world\n".to_vec()).await;
    let line = LineIter::open_remote(open(&not_json), Shard::WHOLE, StreamOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let err = line.json_object(&not_json).unwrap_err().to_string();
    assert!(
        err.contains(&not_json) && err.contains("line 1") && err.contains("not valid JSON"),
        "{err}"
    );
    let err = LineIter::open_remote(
        open(&unique_uri(&bucket, "absent.jsonl")),
        Shard::WHOLE,
        StreamOptions::default(),
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_is_written_last_and_lists_every_file() {
    let Some(bucket) = bucket() else { return };
    let uri = unique_uri(&bucket, "manifest");
    let target = open(&uri);
    let local = tempfile::tempdir().unwrap();
    let ck = local_checkpoint(local.path(), 3, 60).await;
    // A stale object from an earlier upload of the same step is removed.
    put(&target, "stale.bin", b"old".to_vec()).await;
    let manifest = upload_checkpoint(&ck, &target, &small_parts())
        .await
        .unwrap();
    let names: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.pt",
            "trainer_state.json"
        ]
    );
    let listed: BTreeMap<String, object_store::ObjectMeta> = target
        .store
        .list(Some(&target.location.object_path()))
        .map(|m| {
            let m = m.unwrap();
            (m.location.filename().unwrap().to_string(), m)
        })
        .collect()
        .await;
    assert!(!listed.contains_key("stale.bin"));
    let manifest_time = listed[MANIFEST_NAME].last_modified;
    for (name, meta) in &listed {
        assert!(
            meta.last_modified <= manifest_time,
            "{name} was written after the manifest"
        );
    }
    // The manifest's sizes and checksums match what was saved locally.
    let local_manifest = std::fs::read(ck.join(MANIFEST_NAME)).unwrap();
    let remote_manifest = target
        .store
        .get(&target.location.join(MANIFEST_NAME).object_path())
        .await
        .unwrap();
    let remote_manifest = remote_manifest.bytes().await.unwrap();
    let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    assert_eq!(
        parse(&local_manifest)["files"],
        parse(&remote_manifest)["files"]
    );
}
