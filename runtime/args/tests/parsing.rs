//! ms-swift's command-line conventions: lists, dicts, booleans, config files and precedence,
//! derived defaults, and clear errors for bad input.

use std::path::Path;

use kubeswift_args::cli::{Cli, parse};
use kubeswift_args::{Args, ArgsError, Command, Origin, Source};
use serde_json::json;

fn ok(argv: &[&str]) -> Args {
    match parse(std::iter::once("swift").chain(argv.iter().copied())) {
        Ok(Cli::Run { resolved, .. }) => resolved.args,
        other => panic!("{argv:?}: {other:?}"),
    }
}

fn err(argv: &[&str]) -> ArgsError {
    match parse(std::iter::once("swift").chain(argv.iter().copied())) {
        Err(e) => e,
        other => panic!("{argv:?} should fail: {other:?}"),
    }
}

#[test]
fn lists_dicts_and_booleans() {
    let a = ok(&[
        "sft",
        "--model",
        "Qwen/Qwen2.5-0.5B",
        "--dataset",
        "a.jsonl",
        "b.jsonl#100",
        "--model_kwargs",
        r#"{"fps_max_frames": 12}"#,
        "--gradient_checkpointing",
        "false",
        "--packing",
        "--lora-rank",
        "16",
        "--target_modules",
        "q_proj",
        "v_proj",
    ]);
    assert_eq!(a.strings("dataset"), ["a.jsonl", "b.jsonl#100"]);
    assert_eq!(a.get("model_kwargs"), &json!({"fps_max_frames": 12}));
    assert!(!a.bool("gradient_checkpointing"));
    assert!(a.bool("packing"), "a bare boolean flag means true");
    assert_eq!(a.int("lora_rank"), Some(16), "dashes are accepted");
    assert_eq!(a.strings("target_modules"), ["q_proj", "v_proj"]);
    // Untouched arguments keep the seed's defaults.
    assert_eq!(a.int("lora_alpha"), Some(32));
    assert_eq!(a.float("weight_decay"), Some(0.1));
    assert_eq!(a.strings("report_to"), ["tensorboard"]);
    assert_eq!(a.source("lora_alpha"), Some(&Source::Default));
}

#[test]
fn negative_numbers_are_values_not_flags() {
    let a = ok(&[
        "rlhf",
        "--repetition_max_penalty",
        "-2.5",
        "--max_steps",
        "-1",
    ]);
    assert_eq!(a.float("repetition_max_penalty"), Some(-2.5));
    assert_eq!(a.int("max_steps"), Some(-1));
}

#[test]
fn the_last_occurrence_wins() {
    let a = ok(&["sft", "--lora_rank", "4", "--lora_rank", "8"]);
    assert_eq!(a.int("lora_rank"), Some(8));
}

#[test]
fn derived_defaults_follow_the_seed() {
    let lora = ok(&["sft", "--model", "models/Qwen2.5-0.5B/"]);
    assert_eq!(lora.float("learning_rate"), Some(1e-4));
    assert_eq!(lora.str("output_dir"), Some("output/Qwen2.5-0.5B"));
    assert_eq!(lora.str("metric_for_best_model"), Some("loss"));
    assert_eq!(lora.opt_bool("greater_is_better"), Some(false));
    assert_eq!(lora.str("eval_strategy"), Some("steps"));
    assert_eq!(lora.get("eval_steps"), &json!(500));
    assert!(
        !lora.bool("load_args"),
        "training does not load args by default"
    );
    assert_eq!(lora.source("learning_rate"), Some(&Source::Derived));

    let full = ok(&[
        "sft",
        "--model",
        "m",
        "--train_type",
        "full",
        "--save_steps",
        "50",
    ]);
    assert_eq!(full.float("learning_rate"), Some(1e-5));
    assert_eq!(full.get("eval_steps"), &json!(50));

    let gen_eval = ok(&["sft", "--model", "m", "--predict_with_generate", "true"]);
    assert_eq!(gen_eval.str("metric_for_best_model"), Some("rouge-l"));
    assert_eq!(gen_eval.opt_bool("greater_is_better"), Some(true));
    assert_eq!(
        gen_eval.int("max_new_tokens"),
        Some(64),
        "train overrides generation defaults"
    );

    let explicit = ok(&["sft", "--model", "m", "--learning_rate", "3e-4"]);
    assert_eq!(explicit.float("learning_rate"), Some(3e-4));

    for (kind, beta) in [("dpo", 0.1), ("simpo", 2.0), ("grpo", 0.04)] {
        let r = ok(&["rlhf", "--model", "m", "--rlhf_type", kind]);
        assert_eq!(r.float("beta"), Some(beta), "{kind}");
        assert_eq!(r.str("loss_scale"), Some("last_round"));
    }
    let grpo = ok(&["rlhf", "--rlhf_type", "grpo"]);
    assert_eq!(grpo.str("metric_for_best_model"), Some("reward"));
    assert_eq!(grpo.int("top_k"), Some(50));
    let ppo = ok(&["rlhf", "--rlhf_type", "ppo"]);
    assert_eq!(ppo.get("metric_for_best_model"), &serde_json::Value::Null);

    let pt = ok(&["pt", "--model", "m"]);
    assert!(!pt.bool("use_chat_template"));
    assert_eq!(pt.str("loss_scale"), Some("all"));

    let infer = ok(&["infer", "--model", "m"]);
    assert!(infer.bool("load_args"));
    let deploy = ok(&["deploy", "--model", "/x/my-model"]);
    assert_eq!(deploy.str("served_model_name"), Some("my-model"));
    assert_eq!(ok(&["app"]).str("lang"), Some("en"));
    assert_eq!(ok(&["web-ui"]).str("lang"), Some("zh"));
    assert_eq!(ok(&["sample"]).float("temperature"), Some(1.0));
    assert_eq!(ok(&["eval"]).float("temperature"), Some(0.0));
    let merged = ok(&[
        "export",
        "--adapters",
        "out/v0/checkpoint-10",
        "--merge_lora",
        "true",
    ]);
    assert_eq!(
        merged.str("output_dir"),
        Some("out/v0/checkpoint-10-merged")
    );
    assert_eq!(merged.int("max_length"), Some(2048));
}

#[test]
fn config_file_is_read_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("train.yaml");
    std::fs::write(
        &yaml,
        "model: Qwen/Qwen2.5-0.5B\ndataset:\n  - a.jsonl\n  - b.jsonl\nlora_rank: 4\nlearning-rate: 2e-4\nmodel_kwargs: {max_pixels: 1000}\n",
    )
    .unwrap();
    let a = ok(&[
        "sft",
        "--config",
        yaml.to_str().unwrap(),
        "--lora_rank",
        "32",
    ]);
    assert_eq!(a.strings("dataset"), ["a.jsonl", "b.jsonl"]);
    assert_eq!(
        a.int("lora_rank"),
        Some(32),
        "command line overrides the config file"
    );
    assert_eq!(a.float("learning_rate"), Some(2e-4));
    assert_eq!(a.get("model_kwargs"), &json!({"max_pixels": 1000}));
    assert!(matches!(
        a.source("model"),
        Some(Source::Given(Origin::ConfigFile { line: Some(1), .. }))
    ));

    let json_cfg = dir.path().join("train.json");
    std::fs::write(
        &json_cfg,
        r#"{"model": "m", "streaming": true, "max_steps": 10}"#,
    )
    .unwrap();
    let a = ok(&["sft", "--config", json_cfg.to_str().unwrap()]);
    assert!(a.bool("streaming"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "model: m\n\nlora_rnak: 8\n").unwrap();
    let e = err(&["sft", "--config", bad.to_str().unwrap()]);
    let text = e.to_string();
    assert!(
        text.contains("lora_rnak")
            && text.contains("bad.yaml line 3")
            && text.contains("--lora_rank"),
        "{text}"
    );

    let typed = dir.path().join("typed.yaml");
    std::fs::write(&typed, "lora_rank: eight\n").unwrap();
    let text = err(&["sft", "--config", typed.to_str().unwrap()]).to_string();
    assert!(
        text.contains("'eight'")
            && text.contains("lora_rank")
            && text.contains("typed.yaml line 1"),
        "{text}"
    );

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "model: [unclosed\n").unwrap();
    let text = err(&["sft", "--config", broken.to_str().unwrap()]).to_string();
    assert!(
        text.contains("broken.yaml") && text.contains("line"),
        "{text}"
    );

    let missing = err(&["sft", "--config", "/no/such/file.yaml"]).to_string();
    assert!(missing.contains("/no/such/file.yaml"), "{missing}");
}

#[test]
fn unknown_arguments_name_themselves_and_suggest() {
    let e = err(&["sft", "--lora_rnak", "8"]);
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    assert!(
        text.contains("'--lora_rnak'") && text.contains("did you mean '--lora_rank'"),
        "{text}"
    );
    let text = err(&["infer", "--learning_rate", "1e-4"]).to_string();
    assert!(text.contains("swift sft, swift pt, swift rlhf"), "{text}");
    let text = err(&["sft", "--completely_unrelated", "1"]).to_string();
    assert!(!text.contains("did you mean"), "{text}");
}

#[test]
fn bad_values_name_argument_value_and_expectation() {
    let text = err(&["sft", "--lora_rank", "eight"]).to_string();
    assert!(
        text.contains("'eight'") && text.contains("--lora_rank") && text.contains("integer"),
        "{text}"
    );
    let text = err(&["sft", "--torch_dtype", "fp16"]).to_string();
    assert!(text.contains("float16, bfloat16, float32"), "{text}");
    let text = err(&["sft", "--streaming", "maybe"]).to_string();
    assert!(text.contains("true or false"), "{text}");
    let text = err(&["sft", "--model_kwargs", "{oops"]).to_string();
    assert!(text.contains("JSON object"), "{text}");
    let text = err(&["sft", "--split_dataset_ratio", "1.5"]).to_string();
    assert!(
        text.contains("split_dataset_ratio") && text.contains("[0, 1)"),
        "{text}"
    );
    let text = err(&["sample", "--data_range", "3", "3"]).to_string();
    assert!(text.contains("data_range"), "{text}");
    // Optimizer settings PyTorch's AdamW would refuse (a beta of 1.5 diverges silently).
    for (name, value, expected) in [
        ("--adam_beta1", "1.5", "[0, 1)"),
        ("--adam_beta2", "1", "[0, 1)"),
        ("--adam_epsilon", "-0.5", ">= 0"),
        ("--lorap_lr_ratio", "0", "> 0"),
    ] {
        let text = err(&["sft", name, value]).to_string();
        assert!(text.contains(name) && text.contains(expected), "{text}");
    }
    assert_eq!(
        ok(&["sft", "--adam_beta2", "0.999"]).float("adam_beta2"),
        Some(0.999)
    );
    let text = err(&["sft", "--streaming", "true"]).to_string();
    assert!(text.contains("--max_steps"), "{text}");
    let text = err(&["sft", "--template_backend", "jinja"]).to_string();
    assert!(text.contains("inference only"), "{text}");
    let text = err(&["pt", "--loss_scale", "default"]).to_string();
    assert!(text.contains("swift pt"), "{text}");
}

#[test]
fn unbuilt_values_are_refused_as_not_supported() {
    for (argv, needle) in [
        (vec!["sft", "--train_type", "boft"], "'--train_type boft'"),
        (
            vec!["infer", "--infer_backend", "vllm"],
            "'--infer_backend vllm'",
        ),
        (vec!["sft", "--deepspeed", "zero3"], "'--deepspeed zero3'"),
        (vec!["sft", "--report_to", "wandb"], "'--report_to wandb'"),
        (vec!["sft", "--use_galore", "true"], "'--use_galore true'"),
    ] {
        let e = err(&argv);
        assert!(
            matches!(e, ArgsError::NotSupported { .. }),
            "{argv:?}: {e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(needle) && text.contains("not supported yet"),
            "{text}"
        );
    }
    // The default of an unbuilt feature is fine.
    ok(&["sft", "--use_galore", "false", "--train_type", "lora"]);
}

#[test]
fn model_kwargs_are_checked_by_name_and_type() {
    let text = err(&["sft", "--model_kwargs", r#"{"fps_max_frame": 2}"#]).to_string();
    assert!(text.contains("fps_max_frames"), "{text}");
    let text = err(&["sft", "--model_kwargs", r#"{"max_pixels": "big"}"#]).to_string();
    assert!(
        text.contains("max_pixels") && text.contains("integer"),
        "{text}"
    );
    let a = ok(&["infer", "--model_kwargs", r#"{"max_pixels": 100}"#]);
    let env = |name: &str| match name {
        "MAX_PIXELS" => Some("5".to_string()),
        "FPS" => Some("1.5".to_string()),
        _ => None,
    };
    let effective = kubeswift_args::model_kwargs::effective(&a, env).unwrap();
    assert_eq!(
        effective["MAX_PIXELS"],
        json!(100),
        "--model_kwargs wins over the environment"
    );
    assert_eq!(effective["FPS"], json!(1.5));
    assert!(!effective.contains_key("NUM_CROPS"));
    let bad_env = |name: &str| (name == "NUM_CROPS").then(|| "many".to_string());
    let text = kubeswift_args::model_kwargs::effective(&a, bad_env)
        .unwrap_err()
        .to_string();
    assert!(text.contains("NUM_CROPS"), "{text}");
}

#[test]
fn help_lists_groups_with_important_arguments_first() {
    let text = match parse(["swift", "sft", "--help"]) {
        Ok(Cli::Exit { text, code: 0 }) => text,
        other => panic!("{other:?}"),
    };
    let lora = text.find("LoRA arguments:").expect("LoRA group");
    let rank = text[lora..].find("--lora_rank").unwrap();
    let dropout = text[lora..].find("--lora_dropout").unwrap();
    let dora = text[lora..].find("--use_dora").unwrap();
    assert!(
        rank < dora && dora < dropout,
        "🔥 arguments come first within a group"
    );
    assert!(text.contains("🔥--lora_rank <int>  default: 8"));
    assert!(text.contains("--train_type") && text.contains("[supported: lora, full]"));
    assert!(
        text.contains("Seq2SeqTrainer")
            && text.contains("MAX_PIXELS")
            && text.contains("PET_NNODES")
    );
    assert!(
        !text.contains("--rlhf_type"),
        "sft help shows only sft's arguments"
    );
    let top = match parse(["swift", "--help"]) {
        Ok(Cli::Exit { text, code: 0 }) => text,
        other => panic!("{other:?}"),
    };
    for c in Command::ALL {
        assert!(top.contains(c.name()), "{c} missing from swift --help");
    }
}

#[test]
fn resource_args_resolve_with_field_paths() {
    let map = json!({"model": "m", "lora_rank": "16", "dataset": "a.jsonl"});
    let r =
        kubeswift_args::resolve_map(Command::Sft, map.as_object().unwrap(), "spec.args").unwrap();
    assert_eq!(r.args.int("lora_rank"), Some(16));
    assert_eq!(r.args.strings("dataset"), ["a.jsonl"]);
    let bad = json!({"lora_rnak": 16});
    let text = kubeswift_args::resolve_map(Command::Sft, bad.as_object().unwrap(), "spec.args")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("spec.args.lora_rnak") && text.contains("--lora_rank"),
        "{text}"
    );
}

#[test]
fn schema_lists_every_argument_with_its_type() {
    let schema = kubeswift_args::schema::args_schema(&[Command::Sft, Command::Pt, Command::Rlhf]);
    let props = schema["properties"].as_object().unwrap();
    assert_eq!(props.len(), Command::Rlhf.args().len());
    assert_eq!(props["lora_rank"]["type"], "integer");
    assert_eq!(props["dataset"]["type"], "array");
    assert_eq!(
        props["torch_dtype"]["enum"],
        json!(["float16", "bfloat16", "float32"])
    );
    assert_eq!(props["torch_dtype"]["nullable"], true);
    assert_eq!(
        props["model_kwargs"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).exists());
}
