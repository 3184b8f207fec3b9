//! args.json in and out, and load_args: ms-swift and kubeswift read each other's files.

use std::path::Path;

use kubeswift_args::cli::{Cli, parse};
use kubeswift_args::{Args, ArgsError, Command, Source, args_json};
use serde_json::json;

fn ok(argv: &[String]) -> (Args, Option<std::path::PathBuf>) {
    match parse(std::iter::once("swift".to_string()).chain(argv.iter().cloned())) {
        Ok(Cli::Run { resolved, .. }) => (resolved.args, resolved.loaded_from),
        other => panic!("{argv:?}: {other:?}"),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

#[test]
fn round_trip_gives_the_same_resolved_arguments() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        "sft", "pt", "rlhf", "infer", "deploy", "export", "sample", "eval", "app", "web-ui",
    ] {
        let (args, _) = ok(&argv(&[command]));
        let out = dir.path().join(command);
        let path = args_json::write(&args, &out).unwrap();
        assert!(
            !out.join(".args.json.tmp").exists(),
            "no temporary file is left behind"
        );
        let (reloaded, ignored) = args_json::load(args.command(), &path).unwrap();
        assert!(ignored.is_empty(), "{ignored:?}");
        assert_eq!(reloaded.args.to_json(), args.to_json(), "{command}");
    }
    let (args, _) = ok(&argv(&[
        "sft",
        "--model",
        "m",
        "--dataset",
        "a.jsonl",
        "b.jsonl",
        "--lora_rank",
        "4",
        "--model_kwargs",
        r#"{"max_pixels": 7}"#,
        "--model_name",
        "小黄",
        "Xiao Huang",
    ]));
    let path = args_json::write(&args, dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("小黄"),
        "UTF-8 is kept, as ms-swift's ensure_ascii=False does"
    );
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(saved["lora_rank"], 4);
    assert_eq!(saved["learning_rate"], 0.0001);
    assert_eq!(saved["output_dir"], "output/m");
    assert_eq!(saved["torch_dtype"], serde_json::Value::Null);
    let (reloaded, _) = args_json::load(Command::Sft, &path).unwrap();
    assert_eq!(reloaded.args.to_json(), args.to_json());
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ms-swift-sft-args.json")
}

#[test]
fn ms_swift_args_json_is_read() {
    let (resolved, ignored) = args_json::load(Command::Sft, &fixture()).unwrap();
    let a = resolved.args;
    assert_eq!(a.str("model"), Some("Qwen/Qwen2.5-0.5B-Instruct"));
    assert_eq!(a.str("train_type"), Some("lora"));
    assert_eq!(a.int("lora_rank"), Some(8));
    assert_eq!(a.float("num_train_epochs"), Some(1.0));
    assert_eq!(
        a.strings("dataset"),
        [
            "AI-ModelScope/alpaca-gpt4-data-zh#500",
            "swift/self-cognition#500"
        ]
    );
    assert_eq!(a.strings("model_name"), ["小黄", "Xiao Huang"]);
    assert_eq!(a.str("torch_dtype"), Some("bfloat16"));
    assert_eq!(a.opt_bool("bf16"), Some(true));
    assert_eq!(a.strings("target_modules"), ["all-linear"]);
    assert_eq!(a.get("max_memory"), &json!({}));
    // ms-swift writes HF-internal fields we do not take; they are reported, not fatal.
    assert!(ignored.contains(&"model_dir".to_string()), "{ignored:?}");
    assert!(ignored.contains(&"local_rank".to_string()));
}

#[test]
fn load_args_fills_only_unset_base_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint-50");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::copy(fixture(), ckpt.join("args.json")).unwrap();
    let ckpt_s = ckpt.to_str().unwrap();

    let (a, loaded) = ok(&argv(&[
        "infer",
        "--adapters",
        ckpt_s,
        "--system",
        "Be brief.",
    ]));
    assert_eq!(loaded.as_deref(), Some(ckpt.join("args.json").as_path()));
    assert_eq!(
        a.str("model"),
        Some("Qwen/Qwen2.5-0.5B-Instruct"),
        "model filled from args.json"
    );
    assert!(matches!(a.source("model"), Some(Source::Loaded(_))));
    assert_eq!(a.str("torch_dtype"), Some("bfloat16"));
    assert_eq!(a.str("template"), Some("qwen2_5"));
    assert_eq!(
        a.str("system"),
        Some("Be brief."),
        "a given value is never overwritten"
    );
    // Generation arguments are never loaded; data arguments only with --load_data_args.
    assert_eq!(a.int("max_new_tokens"), None);
    assert!(a.strings("dataset").is_empty());
    assert_eq!(a.get("model_name"), &serde_json::Value::Null);
    // Inference does not take max_length from a training run.
    assert_eq!(a.int("max_length"), None);
    // Non-None defaults stay, except the keys ms-swift force-loads.
    assert_eq!(
        a.int("seed"),
        Some(42),
        "seed 1234 in args.json is not force-loaded"
    );
    assert_eq!(a.str("train_type"), Some("lora"));

    let (a, _) = ok(&argv(&[
        "infer",
        "--adapters",
        ckpt_s,
        "--load_data_args",
        "true",
    ]));
    assert_eq!(a.strings("dataset").len(), 2);
    assert_eq!(a.strings("model_name"), ["小黄", "Xiao Huang"]);

    let (a, _) = ok(&argv(&[
        "infer",
        "--adapters",
        ckpt_s,
        "--load_args",
        "false",
    ]));
    assert_eq!(a.str("model"), None);

    // A named adapter (`name=path`, multi-LoRA serving) is read from its path.
    let named = format!("kuby={ckpt_s}");
    let (a, loaded) = ok(&argv(&["deploy", "--adapters", &named]));
    assert_eq!(loaded.as_deref(), Some(ckpt.join("args.json").as_path()));
    assert_eq!(a.str("model"), Some("Qwen/Qwen2.5-0.5B-Instruct"));
    assert_eq!(a.strings("adapters"), [named.as_str()]);

    // Training does not load by default; with --load_args it does, max_length included.
    let (a, loaded) = ok(&argv(&["sft", "--resume_from_checkpoint", ckpt_s]));
    assert!(loaded.is_none());
    assert_eq!(a.str("model"), None);
    let (a, _) = ok(&argv(&[
        "sft",
        "--resume_from_checkpoint",
        ckpt_s,
        "--load_args",
        "true",
    ]));
    assert_eq!(a.int("max_length"), Some(2048));
    assert_eq!(
        a.str("output_dir"),
        Some("output/Qwen2.5-0.5B-Instruct"),
        "derived after loading"
    );
}

#[test]
fn a_corrupt_args_json_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("args.json"),
        "{\n  \"model\": \"m\",\n  oops\n}",
    )
    .unwrap();
    let e = match parse(["swift", "infer", "--model", dir.path().to_str().unwrap()]) {
        Err(e) => e,
        other => panic!("{other:?}"),
    };
    let text = e.to_string();
    assert!(matches!(e, ArgsError::File { .. }), "{e:?}");
    assert!(
        text.contains("args.json") && text.contains("line 3"),
        "{text}"
    );

    std::fs::write(dir.path().join("args.json"), r#"{"torch_dtype": "fp8"}"#).unwrap();
    let text = match parse(["swift", "infer", "--model", dir.path().to_str().unwrap()]) {
        Err(e) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(text.contains("fp8") && text.contains("args.json"), "{text}");
}
