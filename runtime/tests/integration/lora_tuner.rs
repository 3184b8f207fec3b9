//! LoRA injection options on the tiny Qwen2.5 fixture: targets, init, modules_to_save,
//! lora_bias, and a save -> load round trip that reproduces the logits.

use std::path::Path;

use candle_core::{DType, Tensor};
use kubeswift_args::Args;
use kubeswift_args::cli::{Cli, parse};
use kubeswift_runtime::model::{LoadOptions, LogitRows, Pretrained, PretrainedOptions, SeqSpan};
use kubeswift_runtime::tuner::lora::LoraAdapters;
use kubeswift_runtime::tuner::lora_config::LoraConfig;

use crate::tensors::max_diff;

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

fn pissa_args() -> Args {
    args(&[
        "--init_weights",
        "pissa",
        "--lora_rank",
        "4",
        "--lora_alpha",
        "8",
        "--target_modules",
        "q_proj",
        "v_proj",
        "down_proj",
    ])
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale: f32 = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    max_diff(a, b) / scale.max(1e-12)
}

/// PiSSA against PEFT (fixture: scripts/fixtures/make_lora_parity.py): the same
/// `scale * B A` and the same residual base weight for every adapted layer, and the model's
/// output unchanged at step 0.
#[test]
fn pissa_init_matches_peft() {
    let base = logits(&load());
    let fixture = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training/pissa.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut p = load();
    let cfg = LoraConfig::from_args(&pissa_args()).unwrap();
    let adapters = LoraAdapters::inject(&mut p.model, &cfg, 1, "m").unwrap();
    assert_eq!(adapters.layers.len() * 2, fixture.len());
    for (path, layer) in &adapters.layers {
        let delta =
            (layer.b.as_tensor().matmul(layer.a.as_tensor()).unwrap() * layer.scale).unwrap();
        let want = &fixture[&format!("{path}.delta")];
        assert!(
            rel(&delta, want) < 1e-4,
            "{path}: delta {}",
            rel(&delta, want)
        );
    }
    // The parameter list reports the residual too: it is read from the module tree, not
    // kept from loading (a kept copy would also keep the replaced weight's memory).
    let params: std::collections::HashMap<String, Tensor> =
        p.model.named_parameters().into_iter().collect();
    let mut residuals = 0;
    for (path, linear) in p.model.model.linears_mut() {
        if let Some(want) = fixture.get(&format!("{path}.residual")) {
            let r = rel(linear.weight(), want);
            assert!(r < 1e-4, "{path}: residual {r}");
            let listed = &params[&format!("{path}.weight")];
            assert!(rel(listed, want) < 1e-4, "{path}: named_parameters");
            residuals += 1;
        }
    }
    assert_eq!(residuals, adapters.layers.len());
    assert!(max_diff(&logits(&p), &base) < 1e-4);
    assert_eq!(adapters.peft.init_lora_weights, serde_json::json!("pissa"));
}

/// A trained PiSSA adapter reloads onto the original base (the residual is recomputed, as
/// PEFT does), and its `converted/default` plain LoRA (rank 2r) gives the same model too.
#[test]
fn pissa_checkpoints_reload_directly_and_converted() {
    let mut p = load();
    let cfg = LoraConfig::from_args(&pissa_args()).unwrap();
    let adapters = LoraAdapters::inject(&mut p.model, &cfg, 1, "m").unwrap();
    // "Train": move every A and B.
    for (_, layer) in &adapters.layers {
        for v in [&layer.a, &layer.b] {
            let moved = (v.as_tensor() * 1.1).unwrap().affine(1.0, 0.01).unwrap();
            v.set(&moved).unwrap();
        }
    }
    let trained = logits(&p);
    assert!(
        max_diff(&trained, &logits(&load())) > 1e-3,
        "training moved nothing"
    );
    let dir = tempfile::tempdir().unwrap();
    adapters.save(dir.path()).unwrap();

    let mut direct = load();
    LoraAdapters::load(&mut direct.model, dir.path(), false).unwrap();
    let d = max_diff(&logits(&direct), &trained);
    assert!(d < 1e-4, "reloaded PiSSA adapter differs by {d}");

    let converted_dir = dir.path().join("converted/default");
    let mut converted = load();
    let c = LoraAdapters::load(&mut converted.model, &converted_dir, false).unwrap();
    assert_eq!((c.peft.r, c.peft.lora_alpha), (8, 16.0));
    assert_eq!(c.peft.init_lora_weights, serde_json::json!(true));
    let d = max_diff(&logits(&converted), &trained);
    assert!(d < 1e-4, "converted adapter differs by {d}");
}

#[test]
fn randomized_pissa_keeps_the_output_and_is_seeded() {
    let base = logits(&load());
    let run = |seed| {
        let mut p = load();
        let a = args(&[
            "--init_weights",
            "pissa_niter_2",
            "--lora_rank",
            "4",
            "--target_modules",
            "q_proj",
        ]);
        let cfg = LoraConfig::from_args(&a).unwrap();
        let adapters = LoraAdapters::inject(&mut p.model, &cfg, seed, "m").unwrap();
        let b: Vec<f32> = adapters.layers[0]
            .1
            .b
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (logits(&p), b)
    };
    let (l1, b1) = run(1);
    let (_, b1_again) = run(1);
    assert!(max_diff(&l1, &base) < 1e-4);
    assert_eq!(b1, b1_again);
}

#[test]
fn dora_starts_at_the_weight_norm_and_round_trips_through_peft_files() {
    let base = logits(&load());
    let mut p = load();
    // lora_bias all: Qwen2's q/k/v biases train too, and DoRA must not scale them.
    let cfg = LoraConfig::from_args(&args(&["--use_dora", "true", "--lora_bias", "all"])).unwrap();
    let a = LoraAdapters::inject(&mut p.model, &cfg, 1, "m").unwrap();
    assert_eq!(a.layers.len(), 14);
    // B starts at zero and m at ||W|| per row: the gain is 1 and the output unchanged.
    for (path, layer) in &a.layers {
        let gain: Vec<f32> = layer.dora_gain().unwrap().unwrap().to_vec1().unwrap();
        assert!(
            gain.iter().all(|g| (g - 1.0).abs() < 1e-6),
            "{path}: {gain:?}"
        );
    }
    assert!(max_diff(&base, &logits(&p)) < 1e-5);
    let names: Vec<String> = a.trainables(None).into_iter().map(|t| t.name).collect();
    let magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    assert!(names.iter().any(|n| n == magnitude), "{names:?}");
    // Train-like moves on every kind of weight, so the round trip has something to show.
    for (i, t) in a.trainables(None).into_iter().enumerate() {
        let v = t.var.as_tensor();
        let shift = (v.ones_like().unwrap() * (0.01 * (i % 5) as f64 + 0.005)).unwrap();
        let moved = if t.name.ends_with("lora_magnitude_vector") {
            (v * (1.0 + 0.1 * (i % 3) as f64)).unwrap()
        } else {
            (v + shift).unwrap()
        };
        t.var.set(&moved).unwrap();
    }
    let expected = logits(&p);
    assert!(max_diff(&base, &expected) > 1e-3);
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let saved = candle_core::safetensors::load(
        dir.path().join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(saved[magnitude].dims(), [64]);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["use_dora"], true);
    let mut fresh = load();
    LoraAdapters::load(&mut fresh.model, dir.path(), false).unwrap();
    let d = max_diff(&expected, &logits(&fresh));
    assert!(d < 1e-5, "round trip changed logits by {d}");

    // The same file read as plain LoRA is refused, naming the setting.
    let config = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"use_dora\": true", "\"use_dora\": false"),
    )
    .unwrap();
    let err = LoraAdapters::load(&mut load().model, dir.path(), false).unwrap_err();
    assert!(
        err.to_string().contains("lora_magnitude_vector") && err.to_string().contains("use_dora"),
        "{err}"
    );
}

#[test]
fn dora_refuses_pissa_and_starts_where_lora_does_with_random_init() {
    let cfg =
        LoraConfig::from_args(&args(&["--use_dora", "true", "--init_weights", "pissa"])).unwrap();
    let err = LoraAdapters::inject(&mut load().model, &cfg, 1, "m").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("--use_dora") && msg.contains("pissa"),
        "{msg}"
    );
    // Random init: m is the norm of W + scale B A, so DoRA still starts where LoRA does.
    let mut with = load();
    let mut without = load();
    let dora =
        LoraConfig::from_args(&args(&["--use_dora", "true", "--init_weights", "false"])).unwrap();
    let lora = LoraConfig::from_args(&args(&["--init_weights", "false"])).unwrap();
    LoraAdapters::inject(&mut with.model, &dora, 4, "m").unwrap();
    LoraAdapters::inject(&mut without.model, &lora, 4, "m").unwrap();
    let (a, b) = (logits(&with), logits(&without));
    assert!(max_diff(&a, &logits(&load())) > 1e-3);
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
}

/// A merged weight (what `swift export --merge_lora` writes) is a plain value: computed from
/// trainable A, B (and DoRA's m) it would otherwise carry their backprop graph, which holds
/// the replaced base weight and every intermediate product for as long as it lives.
#[test]
fn merged_weights_are_values_without_a_graph() {
    for extra in [
        &["--init_weights", "false"][..],
        &["--use_dora", "true", "--init_weights", "false"],
    ] {
        let mut p = load();
        let cfg = LoraConfig::from_args(&args(extra)).unwrap();
        let a = LoraAdapters::inject(&mut p.model, &cfg, 5, "m").unwrap();
        let linears: std::collections::HashMap<String, Tensor> = p
            .model
            .model
            .linears_mut()
            .into_iter()
            .map(|(path, l)| (path, l.weight().clone()))
            .collect();
        for (path, layer) in &a.layers {
            let w = &linears[path];
            let merged = layer.merged_weight(w).unwrap();
            assert!(
                !merged.track_op(),
                "{extra:?} {path}: merged weight tracks its graph"
            );
            let delta =
                (layer.b.as_tensor().matmul(layer.a.as_tensor()).unwrap() * layer.scale).unwrap();
            let plain = (w + delta).unwrap();
            match &layer.dora {
                None => assert!(max_diff(&merged, &plain) < 1e-6, "{path}"),
                // DoRA rescales each row of W + scale B A to m's norm.
                Some(dora) => {
                    let norms = merged.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
                    let d = max_diff(&norms, dora.magnitude.as_tensor());
                    assert!(d < 1e-4, "{path}: row norms off m by {d}");
                }
            }
        }
    }
}
