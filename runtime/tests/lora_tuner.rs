//! LoRA injection options on the tiny Qwen2.5 fixture: targets, init, modules_to_save,
//! lora_bias, and a save -> load round trip that reproduces the logits.

use std::path::Path;

use candle_core::{DType, Tensor};
use kubeswift_args::Args;
use kubeswift_args::cli::{Cli, parse};
use kubeswift_runtime::model::{LoadOptions, LogitRows, Pretrained, PretrainedOptions, SeqSpan};
use kubeswift_runtime::tuner::lora::LoraAdapters;
use kubeswift_runtime::tuner::lora_config::LoraConfig;

fn load() -> Pretrained {
    let opts = PretrainedOptions {
        model_type: None,
        load: LoadOptions {
            dtype: Some(DType::F32),
            ..LoadOptions::default()
        },
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-Qwen2.5");
    Pretrained::load(&dir, &opts).unwrap()
}

fn args(extra: &[&str]) -> Args {
    let argv = ["swift", "sft", "--model", "m"]
        .into_iter()
        .chain(extra.iter().copied());
    match parse(argv) {
        Ok(Cli::Run { resolved, .. }) => resolved.args,
        other => panic!("{other:?}"),
    }
}

fn logits(p: &Pretrained) -> Tensor {
    let ids = [5u32, 17, 42, 99, 7, 3];
    let mut cache = p.model.new_kv_cache();
    let slot = cache.allocate(ids.len());
    let span = SeqSpan {
        slot,
        start: 0,
        len: ids.len(),
    };
    p.model
        .forward_infer(&ids, &[span], &mut cache, LogitRows::All)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn targets_pick_the_named_linears_and_default_init_leaves_the_output_unchanged() {
    let base = logits(&load());
    let mut p = load();
    let cfg = LoraConfig::from_args(&args(&["--target_modules", "q_proj", "v_proj"])).unwrap();
    let a = LoraAdapters::inject(&mut p.model, &cfg, 1, "m").unwrap();
    let paths: Vec<&str> = a.layers.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    assert_eq!(max_diff(&base, &logits(&p)), 0.0, "B starts at zero");
    // init_weights false: random B, so the adapter changes the output at once.
    let mut q = load();
    let cfg = LoraConfig::from_args(&args(&["--init_weights", "false"])).unwrap();
    LoraAdapters::inject(&mut q.model, &cfg, 1, "m").unwrap();
    assert!(max_diff(&base, &logits(&q)) > 1e-4);
    // gaussian: A ~ N(0, 1/r), B zero.
    let mut g = load();
    let cfg =
        LoraConfig::from_args(&args(&["--init_weights", "gaussian", "--lora_rank", "4"])).unwrap();
    let ad = LoraAdapters::inject(&mut g.model, &cfg, 1, "m").unwrap();
    let a0: Vec<f32> = ad.layers[0]
        .1
        .a
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let std = (a0.iter().map(|x| x * x).sum::<f32>() / a0.len() as f32).sqrt();
    assert!((std - 0.25).abs() < 0.05, "std {std}");
    // A regex matching nothing is refused, naming the argument.
    let mut r = load();
    let cfg = LoraConfig::from_args(&args(&["--target_regex", r".*\.nothing"])).unwrap();
    let err = LoraAdapters::inject(&mut r.model, &cfg, 1, "m").unwrap_err();
    assert!(
        err.to_string().contains("target_modules/target_regex"),
        "{err}"
    );
}

#[test]
fn modules_to_save_and_lora_bias_train_and_round_trip_through_peft_files() {
    let mut p = load();
    let cfg = LoraConfig::from_args(&args(&[
        "--init_weights",
        "false",
        "--modules_to_save",
        "lm_head",
        "--lora_bias",
        "all",
    ]))
    .unwrap();
    let a = LoraAdapters::inject(&mut p.model, &cfg, 3, "m").unwrap();
    let names: Vec<String> = a.trainables(None).into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"base_model.model.lm_head.weight".to_string()));
    assert!(
        names.contains(
            &"base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias".to_string()
        )
    );
    // Move the trained copies away from the base so the round trip has something to show.
    for t in a.trainables(None) {
        if t.name.ends_with("lm_head.weight") || t.name.ends_with(".bias") {
            t.var.set(&(t.var.as_tensor() + 0.01).unwrap()).unwrap();
        }
    }
    let expected = logits(&p);
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let mut fresh = load();
    assert!(max_diff(&expected, &logits(&fresh)) > 1e-4);
    let back = LoraAdapters::load(&mut fresh.model, dir.path(), false).unwrap();
    assert_eq!(back.layers.len(), a.layers.len());
    let d = max_diff(&expected, &logits(&fresh));
    assert!(d < 1e-5, "round trip changed logits by {d}");
    // The config PEFT reads back.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["modules_to_save"][0], "lm_head");
}
