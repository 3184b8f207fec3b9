//! Training parity with PEFT and transformers on the tiny Qwen2.5 model
//! (fixture: scripts/fixtures/make_lora_parity.py): the same batch and the same initial
//! LoRA A/B give the same loss (1e-5) and the same gradients (1e-4 relative), for LoRA and
//! for full fine-tuning, with and without gradient checkpointing; and a PEFT-made adapter
//! gives PEFT's logits in both modes. The same for DoRA (`use_dora`): loss and the
//! gradients of A, B and the magnitude, PEFT's magnitude init, PEFT's logits unmerged,
//! merged, and served beside a plain LoRA adapter in one multi-LoRA batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kubeswift_runtime::export::merge::merge_adapter;
use kubeswift_runtime::model::decoder::{LayerProducts, Products};
use kubeswift_runtime::model::{
    LoadOptions, LogitRows, Pretrained, PretrainedOptions, SeqSpan, TrainBatch,
};
use kubeswift_runtime::train::neftune::EmbedNoise;
use kubeswift_runtime::train::optimizer::{AdamW, AdamWConfig};
use kubeswift_runtime::train::step::{
    Checkpointing, MicroBatch, evaluate, forward_backward, hidden_train,
};
use kubeswift_runtime::tuner::dora::magnitude_key;
use kubeswift_runtime::tuner::lora::LoraAdapters;
use kubeswift_runtime::tuner::lora_config::peft_key;
use kubeswift_runtime::tuner::multi_lora::{AdapterSet, RowRun, with_routing};
use serde_json::Value;

use crate::tensors::max_diff;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load() -> Pretrained {
    let opts = PretrainedOptions {
        model_type: None,
        load: LoadOptions {
            dtype: Some(DType::F32),
            ..LoadOptions::default()
        },
    };
    Pretrained::load(&fixtures().join("models/tiny-Qwen2.5"), &opts).unwrap()
}

struct Fixture {
    ids: Vec<Vec<u32>>,
    labels: Vec<Vec<i64>>,
    lora_loss: f64,
    full_loss: f64,
    lora: HashMap<String, Tensor>,
    full: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dir = fixtures().join("training");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let rows = |key: &str| -> Vec<Vec<i64>> {
        meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let load = |f: &str| candle_core::safetensors::load(dir.join(f), &Device::Cpu).unwrap();
    Fixture {
        ids: rows("input_ids")
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as u32).collect())
            .collect(),
        labels: rows("labels"),
        lora_loss: meta["lora_loss"].as_f64().unwrap(),
        full_loss: meta["full_loss"].as_f64().unwrap(),
        lora: load("lora.safetensors"),
        full: load("full.safetensors"),
    }
}

/// The fixture batch as the trainer feeds it (labels shifted to line up with positions).
fn micro_batch(f: &Fixture) -> MicroBatch {
    let (b, t) = (f.ids.len(), f.ids[0].len());
    let ids: Vec<u32> = f.ids.concat();
    let shifted: Vec<i64> = f
        .labels
        .iter()
        .flat_map(|r| r[1..].iter().copied().chain([-100]))
        .collect();
    MicroBatch::new(
        Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(
            (0..b).flat_map(|_| 0..t as u32).collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )
        .unwrap(),
        shifted,
        vec![vec![t]; b],
    )
    .unwrap()
}

fn rel_diff(ours: &[f32], reference: &Tensor) -> f32 {
    let r: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), r.len());
    let scale = r.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = ours
        .iter()
        .zip(&r)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn adamw() -> AdamWConfig {
    AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

/// Every way a step can treat activations: each must give the same loss and gradients.
const ALL_CHECKPOINTING: [Checkpointing; 3] = [
    Checkpointing::Off,
    Checkpointing::Full,
    Checkpointing::Selective,
];

/// Loss and per-parameter gradients of the mean loss, through the trainer's step.
fn run_step(
    p: &Pretrained,
    trainables: Vec<kubeswift_runtime::train::optimizer::Trainable>,
    checkpointing: Checkpointing,
    f: &Fixture,
) -> (f64, HashMap<String, Vec<f32>>) {
    let mb = micro_batch(f);
    let mut opt = AdamW::new(trainables, adamw()).unwrap();
    let stats = forward_backward(&p.model, &mb, &mut opt, checkpointing).unwrap();
    assert_eq!(stats.tokens, mb.tokens);
    let n = stats.tokens as f32;
    let grads = opt
        .grads()
        .map(|(name, g)| (name.to_string(), g.iter().map(|x| x / n).collect()))
        .collect();
    (stats.mean_loss(), grads)
}

#[test]
fn lora_loss_and_every_gradient_match_peft() {
    let f = fixture();
    for checkpointing in ALL_CHECKPOINTING {
        let mut p = load();
        let adapters =
            LoraAdapters::load(&mut p.model, &fixtures().join("training/adapter"), true).unwrap();
        assert_eq!(adapters.layers.len(), 14, "all-linear on 2 layers");
        let (loss, grads) = run_step(&p, adapters.trainables(None), checkpointing, &f);
        assert!(
            (loss - f.lora_loss).abs() < 1e-5,
            "loss {loss} vs PEFT {} (checkpointing {checkpointing:?})",
            f.lora_loss
        );
        for (path, _) in &adapters.layers {
            for which in ["lora_A", "lora_B"] {
                let key = peft_key(path, which);
                let d = rel_diff(&grads[&key], &f.lora[&key]);
                assert!(d < 1e-4, "{key}: relative gradient difference {d}");
            }
        }
    }
}

#[test]
fn the_last_layer_on_loss_rows_only_gives_the_every_row_loss_and_gradients() {
    let f = fixture();
    let mut p = load();
    let adapters =
        LoraAdapters::load(&mut p.model, &fixtures().join("training/adapter"), true).unwrap();
    for checkpointing in ALL_CHECKPOINTING {
        let step = |mb: &MicroBatch| {
            let mut opt = AdamW::new(adapters.trainables(None), adamw()).unwrap();
            let stats = forward_backward(&p.model, mb, &mut opt, checkpointing).unwrap();
            let grads: HashMap<String, Vec<f32>> = opt
                .grads()
                .map(|(name, g)| (name.to_string(), g.to_vec()))
                .collect();
            (stats, grads)
        };
        let rows_only = micro_batch(&f);
        let head = rows_only
            .head_rows
            .as_ref()
            .expect("the fixture has prompt tokens");
        assert!(head.rows.len() < rows_only.labels.elem_count());
        let hidden = hidden_train(&p.model, &rows_only).unwrap();
        assert_eq!(
            hidden.dims()[0],
            head.rows.len(),
            "the head sees the loss rows only"
        );
        let mut every_row = micro_batch(&f);
        every_row.head_rows = None;
        let (a, ga) = step(&rows_only);
        let (b, gb) = step(&every_row);
        assert_eq!(a, b, "stats ({checkpointing:?})");
        assert_eq!(ga.len(), gb.len());
        for (name, g) in &ga {
            let d = g
                .iter()
                .zip(&gb[name])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let scale = gb[name].iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                d <= 1e-6 * scale,
                "{name}: {d} apart (largest {scale}, {checkpointing:?})"
            );
        }
    }
}

#[test]
fn full_fine_tuning_loss_and_every_gradient_match_transformers() {
    let f = fixture();
    for checkpointing in ALL_CHECKPOINTING {
        let mut p = load();
        let vars = p.model.make_trainable(|_| true).unwrap();
        assert_eq!(vars.len(), f.full.len());
        let trainables = vars
            .into_iter()
            .map(
                |(name, var)| kubeswift_runtime::train::optimizer::Trainable {
                    name,
                    var,
                    decay: true,
                    lr_scale: 1.0,
                },
            )
            .collect();
        let (loss, grads) = run_step(&p, trainables, checkpointing, &f);
        assert!(
            (loss - f.full_loss).abs() < 1e-5,
            "loss {loss} vs transformers {}",
            f.full_loss
        );
        for (name, reference) in &f.full {
            let d = rel_diff(&grads[name], reference);
            assert!(
                d < 1e-4,
                "{name}: relative gradient difference {d} (checkpointing {checkpointing:?})"
            );
        }
    }
}

#[test]
fn a_peft_adapter_gives_peft_logits_in_both_modes() {
    let f = fixture();
    let mut p = load();
    LoraAdapters::load(&mut p.model, &fixtures().join("training/adapter"), false).unwrap();
    assert_logits_in_both_modes(&p, &f, &f.lora["logits"]);
}

/// The model's logits for the fixture batch equal `reference` (1e-4) through the inference
/// path and through the training path.
fn assert_logits_in_both_modes(p: &Pretrained, f: &Fixture, reference: &Tensor) {
    for (row, ids) in f.ids.iter().enumerate() {
        let expected = reference.get(row).unwrap();
        // Inference: the fast CPU path plus the adapter.
        let mut cache = p.model.new_kv_cache();
        let slot = cache.allocate(ids.len());
        let span = SeqSpan {
            slot,
            start: 0,
            len: ids.len(),
        };
        let infer = p
            .model
            .forward_infer(ids, &[span], &mut cache, LogitRows::All)
            .unwrap();
        // Training mode: the fused LoRA kernel.
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = p
            .model
            .forward_train(&TrainBatch {
                input_ids: &input,
                position_ids: None,
                sample_lengths: None,
            })
            .unwrap();
        let train = p.model.logits_train(&hidden).unwrap().squeeze(0).unwrap();
        for (mode, logits) in [("infer", infer), ("train", train)] {
            let d = max_diff(&logits, &expected);
            assert!(d < 1e-4, "{mode} row {row}: max |logit diff| {d}");
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// NEFTune: zero noise is bit for bit the plain forward; real noise changes the training
/// loss identically with and without gradient checkpointing, and never the evaluation.
#[test]
fn neftune_noise_changes_training_loss_only() {
    let mut p = load();
    let f = fixture();
    let adapters =
        LoraAdapters::load(&mut p.model, &fixtures().join("training/adapter"), true).unwrap();
    let plain = micro_batch(&f);
    let reference = p.model.forward_train(&TrainBatch {
        input_ids: &plain.input_ids,
        position_ids: Some(&plain.position_ids),
        sample_lengths: Some(&plain.sample_lengths),
    });
    let mut zero = micro_batch(&f);
    // Every row to the head, as `forward_train` returns them.
    zero.head_rows = None;
    zero.embed_noise = Some(EmbedNoise {
        alpha: 0.0,
        seed: 3,
    });
    assert_eq!(
        bits(&hidden_train(&p.model, &zero).unwrap()),
        bits(&reference.unwrap())
    );

    let step = |mb: &MicroBatch, checkpointing: Checkpointing| {
        let mut opt = AdamW::new(adapters.trainables(None), adamw()).unwrap();
        forward_backward(&p.model, mb, &mut opt, checkpointing)
            .unwrap()
            .mean_loss()
    };
    let clean = step(&plain, Checkpointing::Off);
    let mut noisy = micro_batch(&f);
    noisy.embed_noise = EmbedNoise::for_micro_step(15.0, 42, 0);
    let with_noise = step(&noisy, Checkpointing::Off);
    let with_noise_ckpt = step(&noisy, Checkpointing::Full);
    let with_noise_selective = step(&noisy, Checkpointing::Selective);
    assert!(
        (with_noise - clean).abs() > 1e-4,
        "noise left the loss at {clean}"
    );
    assert!(
        (with_noise - with_noise_ckpt).abs() < 1e-5,
        "{with_noise} vs checkpointed {with_noise_ckpt}"
    );
    assert!(
        (with_noise - with_noise_selective).abs() < 1e-5,
        "{with_noise} vs selectively checkpointed {with_noise_selective}"
    );
    let other_step = {
        let mut mb = micro_batch(&f);
        mb.embed_noise = EmbedNoise::for_micro_step(15.0, 42, 1);
        step(&mb, Checkpointing::Off)
    };
    assert_ne!(
        other_step, with_noise,
        "each micro-batch draws its own noise"
    );
    let eval_clean = evaluate(&p.model, &plain).unwrap();
    let eval_noisy = evaluate(&p.model, &noisy).unwrap();
    assert_eq!(eval_clean.loss_sum.to_bits(), eval_noisy.loss_sum.to_bits());
    assert!((eval_clean.mean_loss() - clean).abs() < 1e-6);
}

/// PEFT's DoRA fixture: its mean loss and `dora.safetensors` (logits, gradients by saved
/// key, `<module>.magnitude_init`).
fn dora_fixture() -> (f64, HashMap<String, Tensor>) {
    let dir = fixtures().join("training");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dora.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("dora.safetensors"), &Device::Cpu);
    (meta["loss"].as_f64().unwrap(), tensors.unwrap())
}

fn dora_adapter() -> PathBuf {
    fixtures().join("training/dora_adapter")
}

#[test]
fn dora_loss_and_every_gradient_match_peft() {
    let f = fixture();
    let (peft_loss, reference) = dora_fixture();
    for checkpointing in ALL_CHECKPOINTING {
        let mut p = load();
        let adapters = LoraAdapters::load(&mut p.model, &dora_adapter(), true).unwrap();
        assert_eq!(adapters.layers.len(), 14, "all-linear on 2 layers");
        assert!(adapters.layers.iter().all(|(_, l)| l.dora.is_some()));
        let trainables = adapters.trainables(None);
        assert_eq!(trainables.len(), 3 * 14, "A, B and the magnitude per layer");
        let (loss, grads) = run_step(&p, trainables, checkpointing, &f);
        let loss_diff = (loss - peft_loss).abs();
        assert!(
            loss_diff < 1e-5,
            "loss {loss} vs PEFT {peft_loss} (checkpointing {checkpointing:?})"
        );
        let mut worst = [0f32; 3];
        for (path, _) in &adapters.layers {
            let keys = [
                peft_key(path, "lora_A"),
                peft_key(path, "lora_B"),
                magnitude_key(path),
            ];
            for (i, key) in keys.iter().enumerate() {
                let d = rel_diff(&grads[key], &reference[key]);
                assert!(d < 1e-4, "{key}: relative gradient difference {d}");
                worst[i] = worst[i].max(d);
            }
        }
        eprintln!(
            "DoRA parity (checkpointing {checkpointing:?}): |loss diff| {loss_diff:e}, max relative \
             gradient diff A {:e}, B {:e}, magnitude {:e}",
            worst[0], worst[1], worst[2]
        );
    }
}

#[test]
fn dora_norms_match_peft_init() {
    // PEFT initialised each magnitude to ||W + scale B A|| of these A and B, then the
    // fixture scaled it: so m / gain (our norm) must give PEFT's init back.
    let (_, reference) = dora_fixture();
    let mut p = load();
    let adapters = LoraAdapters::load(&mut p.model, &dora_adapter(), true).unwrap();
    for (path, layer) in &adapters.layers {
        let dora = layer.dora.as_ref().unwrap();
        let gain = layer.dora_gain().unwrap().unwrap();
        let norm = (dora.magnitude.as_tensor() / &gain).unwrap();
        let init = &reference[&format!("{path}.magnitude_init")];
        let d = rel_diff(&norm.to_vec1::<f32>().unwrap(), init);
        assert!(
            d < 1e-5,
            "{path}: norm vs PEFT's init differ by {d} (relative)"
        );
        // The fixture moved m away from the norm, so the DoRA terms all matter.
        let g: Vec<f32> = gain.to_vec1().unwrap();
        assert!(
            g.iter().any(|x| (x - 1.0).abs() > 0.05),
            "{path}: gain {g:?}"
        );
    }
}

#[test]
fn a_peft_dora_adapter_gives_peft_logits_unmerged_and_merged() {
    let f = fixture();
    let (_, reference) = dora_fixture();
    let logits = &reference["logits"];
    // The adapter changes the logits beyond plain LoRA's: comparing with PEFT means something.
    assert!(max_diff(logits, &f.lora["logits"]) > 0.1);
    let mut p = load();
    LoraAdapters::load(&mut p.model, &dora_adapter(), false).unwrap();
    assert_logits_in_both_modes(&p, &f, logits);
    let mut merged = load();
    assert_eq!(
        merge_adapter(&mut merged.model, &dora_adapter()).unwrap(),
        14
    );
    assert_logits_in_both_modes(&merged, &f, logits);
}

#[test]
fn a_dora_adapter_shares_a_multi_lora_batch_with_lora_and_the_base() {
    let f = fixture();
    let (_, dora) = dora_fixture();
    let plain = load();
    let mut p = load();
    let set = AdapterSet::attach(
        &mut p.model,
        &[fixtures().join("training/adapter"), dora_adapter()],
    )
    .unwrap();
    assert_eq!(set.adapted_layers, 14);
    // One forward of four sequences: row 0 with DoRA, row 0 with LoRA, row 1 with the base
    // model, row 1 with DoRA.
    let plan = [(0, Some(1)), (0, Some(0)), (1, None), (1, Some(1))];
    let mut cache = p.model.new_kv_cache();
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let mut routing = Vec::new();
    for &(row, adapter) in &plan {
        let ids = &f.ids[row];
        let slot = cache.allocate(ids.len());
        spans.push(SeqSpan {
            slot,
            start: 0,
            len: ids.len(),
        });
        tokens.extend_from_slice(ids);
        routing.push(RowRun {
            rows: ids.len(),
            adapter,
        });
    }
    let logits = with_routing(&routing, || {
        p.model
            .forward_infer(&tokens, &spans, &mut cache, LogitRows::All)
            .unwrap()
    });
    let mut start = 0;
    for &(row, adapter) in &plan {
        let n = f.ids[row].len();
        let ours = logits.narrow(0, start, n).unwrap();
        start += n;
        let expected = match adapter {
            Some(1) => dora["logits"].get(row).unwrap(),
            Some(_) => f.lora["logits"].get(row).unwrap(),
            None => {
                let mut c = plain.model.new_kv_cache();
                let slot = c.allocate(n);
                let span = SeqSpan {
                    slot,
                    start: 0,
                    len: n,
                };
                plain
                    .model
                    .forward_infer(&f.ids[row], &[span], &mut c, LogitRows::All)
                    .unwrap()
            }
        };
        let d = max_diff(&ours, &expected);
        assert!(
            d < 1e-4,
            "row {row}, adapter {adapter:?}: max |logit diff| {d}"
        );
    }
}

/// Selective recomputation keeps a layer's q/k/v and gate/up outputs from the forward and
/// its replay takes them instead of multiplying again: replaying gives the forward's value
/// bit for bit, and replaying altered products gives another value (they are read, not
/// recomputed). Gradients through the replay are checked by the parity tests above.
#[test]
fn selective_recomputation_replays_the_kept_products() {
    let f = fixture();
    let mut p = load();
    LoraAdapters::load(&mut p.model, &fixtures().join("training/adapter"), true).unwrap();
    let mb = micro_batch(&f);
    let batch = TrainBatch {
        input_ids: &mb.input_ids,
        position_ids: Some(&mb.position_ids),
        sample_lengths: Some(&mb.sample_lengths),
    };
    let ctx = p.model.train_context(&batch).unwrap();
    let x = p.model.model.embed_train(&mb.input_ids).unwrap();
    let layer = &p.model.model.layers[0];
    let mut kept = LayerProducts::default();
    let (h, y) = layer
        .forward_train_halves(&x, &ctx, Some(&mut kept))
        .unwrap();
    assert_eq!((kept.attention.len(), kept.mlp.len()), (3, 2));
    assert!(
        kept.attention.iter().chain(&kept.mlp).all(Option::is_some),
        "every LoRA layer's product is kept"
    );
    let normed = layer.input_layernorm.forward_train(&x).unwrap();
    let q = layer.self_attn.q_proj.forward_train(&normed).unwrap();
    let kept_q = kept.attention[0].as_ref().unwrap();
    assert_eq!(max_diff(kept_q, &q), 0.0, "q_proj's output is kept");

    let replayed_h = layer
        .attention_half(&x, &ctx, false, Products::Reuse(&kept.attention))
        .unwrap();
    assert_eq!(max_diff(&replayed_h, &h), 0.0);
    let replayed_y = layer
        .mlp_half(&h, false, Products::Reuse(&kept.mlp))
        .unwrap();
    assert_eq!(max_diff(&replayed_y, &y), 0.0);

    let doubled: Vec<Option<Tensor>> = kept
        .mlp
        .iter()
        .map(|t| t.as_ref().map(|t| (t * 2.0).unwrap()))
        .collect();
    let altered = layer
        .mlp_half(&h, false, Products::Reuse(&doubled))
        .unwrap();
    assert!(
        max_diff(&altered, &y) > 1e-3,
        "the replay must read the kept products"
    );
}
