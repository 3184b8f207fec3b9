//! `swift export --merge_lora true` on the tiny Qwen2.5 fixture and the PEFT-made fixture
//! adapter: the merged folder's logits equal the base model with the adapter unmerged and
//! PEFT's own logits (f32, 1e-4), it loads back with our loader (sharded or not), and
//! mistakes (missing adapter, existing folder, bad shard size) fail with clear messages.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use kubeswift_args::Args;
use kubeswift_args::cli::{Cli, parse};
use kubeswift_runtime::model::{LoadOptions, LogitRows, Pretrained, PretrainedOptions, SeqSpan};
use kubeswift_runtime::tuner::lora::LoraAdapters;
use serde_json::Value;

use crate::tensors::max_diff;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base_dir() -> PathBuf {
    fixtures().join("models/tiny-Qwen2.5")
}

fn adapter_dir() -> PathBuf {
    fixtures().join("training/adapter")
}

/// Loads a model folder as `swift infer --model <dir>` does: load_args reads the
/// model_type from the folder's args.json when it has one (a merged export does).
fn load(dir: &Path) -> Pretrained {
    let dir_s = dir.display().to_string();
    let args = match parse(["swift", "infer", "--model", dir_s.as_str()]) {
        Ok(Cli::Run { resolved, .. }) => resolved.args,
        other => panic!("{other:?}"),
    };
    let opts = PretrainedOptions {
        model_type: args.str("model_type").map(String::from),
        load: LoadOptions {
            dtype: Some(DType::F32),
            ..LoadOptions::default()
        },
    };
    Pretrained::load(dir, &opts).unwrap()
}

fn export_args(extra: &[&str]) -> Args {
    let argv = ["swift", "export", "--merge_lora", "true"]
        .into_iter()
        .chain(extra.iter().copied());
    match parse(argv) {
        Ok(Cli::Run { resolved, .. }) => resolved.args,
        other => panic!("{other:?}"),
    }
}

fn export(extra: &[&str]) -> anyhow::Result<()> {
    kubeswift_runtime::export::command::run(&export_args(extra))
}

/// Logits `[rows, vocab]` of each row of token ids, one sequence each.
fn logits(p: &Pretrained, rows: &[Vec<u32>]) -> Vec<Tensor> {
    rows.iter()
        .map(|ids| {
            let mut cache = p.model.new_kv_cache();
            let slot = cache.allocate(ids.len());
            let span = SeqSpan {
                slot,
                start: 0,
                len: ids.len(),
            };
            p.model
                .forward_infer(ids, &[span], &mut cache, LogitRows::All)
                .unwrap()
        })
        .collect()
}

/// The fixture batch PEFT's logits were computed on.
fn peft_batch() -> (Vec<Vec<u32>>, Tensor) {
    let batch: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("training/batch.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(batch["input_ids"].clone()).unwrap();
    let mut lora = candle_core::safetensors::load(
        fixtures().join("training/lora.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    (ids, lora.remove("logits").unwrap())
}

#[test]
fn merged_model_equals_base_plus_adapter_and_peft_and_loads_back_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (base, adapter, out_s) = (
        base_dir().display().to_string(),
        adapter_dir().display().to_string(),
        out.display().to_string(),
    );
    export(&[
        "--model",
        &base,
        "--adapters",
        &adapter,
        "--output_dir",
        &out_s,
        "--max_shard_size",
        "100KB",
    ])
    .unwrap();

    // A standard HF folder: shards under the limit (a tensor alone may exceed it), an index
    // naming every tensor, config, tokenizer, generation config, args.json.
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() > 1, "{shards:?}");
    let n = shards.len();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(*s, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let tensors_in = map.values().filter(|v| v == s).count();
        let size = std::fs::metadata(out.join(s)).unwrap().len();
        assert!(
            size <= 100_000 + 4096 || tensors_in == 1,
            "{s}: {size} bytes"
        );
        // As readable as config.json (a created file's mode, not a temporary file's 0600).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode();
            assert_eq!(mode(s) & 0o777, mode("config.json") & 0o777, "{s}");
        }
    }
    assert!(map.contains_key("lm_head.weight") && map.contains_key("model.norm.weight"));
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "args.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("reference.safetensors").exists());
    assert!(!out.join("model.safetensors").exists());
    let args_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("args.json")).unwrap()).unwrap();
    assert_eq!(args_json["merge_lora"], Value::Bool(true));
    assert_eq!(args_json["model_type"], "qwen2_5");

    // Numbers: merged == base + unmerged adapter == PEFT.
    let (rows, peft_logits) = peft_batch();
    let merged = load(&out);
    let mut unmerged = load(&base_dir());
    LoraAdapters::load(&mut unmerged.model, &adapter_dir(), false).unwrap();
    let plain = load(&base_dir());
    let (m, u, p) = (
        logits(&merged, &rows),
        logits(&unmerged, &rows),
        logits(&plain, &rows),
    );
    for (i, row) in rows.iter().enumerate() {
        let diff = max_diff(&m[i], &u[i]);
        assert!(diff < 1e-4, "row {i}: merged vs unmerged differ by {diff}");
        let peft = peft_logits.get(i).unwrap().narrow(0, 0, row.len()).unwrap();
        let diff = max_diff(&m[i], &peft);
        assert!(diff < 1e-4, "row {i}: merged vs PEFT differ by {diff}");
        // The adapter really changes the model, so the equalities above mean something.
        assert!(
            max_diff(&m[i], &p[i]) > 1e-2,
            "row {i}: the merge changed nothing"
        );
    }
}

#[test]
fn an_existing_folder_is_refused_unless_exist_ok_and_stale_shards_go() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model-00001-of-00009.safetensors"), b"stale").unwrap();
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    // Other weights files are the user's: an exist_ok export replaces only its own.
    std::fs::write(out.join("adapter_model.safetensors"), b"adapter").unwrap();
    std::fs::write(out.join("optimizer.safetensors"), b"state").unwrap();
    let (base, adapter, out_s) = (
        base_dir().display().to_string(),
        adapter_dir().display().to_string(),
        out.display().to_string(),
    );
    let args = [
        "--model",
        &base,
        "--adapters",
        &adapter,
        "--output_dir",
        &out_s,
    ];
    let e = format!("{:#}", export(&args).unwrap_err());
    assert!(
        e.contains(&out_s) && e.contains("already exists") && e.contains("--exist_ok true"),
        "{e}"
    );
    let mut again = args.to_vec();
    again.extend(["--exist_ok", "true"]);
    export(&again).unwrap();
    // Under the default 5GB one file, no index, no stale shard; other files stay.
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("model.safetensors.index.json").exists());
    assert!(!out.join("model-00001-of-00009.safetensors").exists());
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        b"adapter"
    );
    assert_eq!(
        std::fs::read(out.join("optimizer.safetensors")).unwrap(),
        b"state"
    );
    let merged = load(&out);
    assert_eq!(merged.model.config.num_hidden_layers, 2);
}

#[test]
fn the_model_or_adapter_folder_is_never_the_output_even_with_exist_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let ckpt = tmp.path().join("checkpoint-10");
    for (from, to) in [(base_dir(), &base), (adapter_dir(), &ckpt)] {
        std::fs::create_dir(to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let before = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let (base_files, ckpt_files) = (before(&base), before(&ckpt));
    let (base_s, ckpt_s) = (base.display().to_string(), ckpt.display().to_string());
    for (output, argument) in [
        (format!("{base_s}/"), "--model"),
        (format!("{ckpt_s}/../checkpoint-10"), "--adapters"),
    ] {
        let e = format!(
            "{:#}",
            export(&[
                "--model",
                &base_s,
                "--adapters",
                &ckpt_s,
                "--output_dir",
                &output,
                "--exist_ok",
                "true",
            ])
            .unwrap_err()
        );
        assert!(
            e.contains(&output) && e.contains(&format!("is the {argument} folder")),
            "{e}"
        );
    }
    assert_eq!(before(&base), base_files, "the model folder is untouched");
    assert_eq!(before(&ckpt), ckpt_files, "the adapter folder is untouched");
}

#[test]
fn the_default_output_is_the_checkpoint_with_merged_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoint-10");
    std::fs::create_dir(&ckpt).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir().join(f), ckpt.join(f)).unwrap();
    }
    let base = base_dir().display().to_string();
    let ckpt_s = ckpt.display().to_string();
    export(&["--model", &base, "--adapters", &ckpt_s]).unwrap();
    let out = tmp.path().join("checkpoint-10-merged");
    assert!(out.join("model.safetensors").is_file());
    assert!(out.join("config.json").is_file());
}

#[test]
fn mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir().display().to_string();
    let out_s = tmp.path().join("out").display().to_string();
    let missing = tmp.path().join("no-such-adapter").display().to_string();
    let e = format!(
        "{:#}",
        export(&[
            "--model",
            &base,
            "--adapters",
            &missing,
            "--output_dir",
            &out_s
        ])
        .unwrap_err()
    );
    assert!(
        e.contains(&missing) && e.contains("adapter_config.json"),
        "{e}"
    );

    let adapter = adapter_dir().display().to_string();
    let e = format!(
        "{:#}",
        export(&[
            "--model",
            &base,
            "--adapters",
            &adapter,
            "--output_dir",
            &out_s,
            "--max_shard_size",
            "lots",
        ])
        .unwrap_err()
    );
    assert!(e.contains("--max_shard_size lots"), "{e}");

    let e = format!("{:#}", export(&["--model", &base]).unwrap_err());
    assert!(e.contains("--adapters"), "{e}");

    // Through the binary: a clear line on stderr and a failing exit code.
    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    let taken = tmp.path().join("taken").display().to_string();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_swift"))
        .args([
            "export",
            "--model",
            &base,
            "--adapters",
            &adapter,
            "--merge_lora",
            "true",
            "--output_dir",
            &taken,
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
}
