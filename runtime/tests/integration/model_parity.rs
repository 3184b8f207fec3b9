//! The tiny fixture models (scripts/fixtures/make_tiny_models.py) against transformers'
//! logits, in both modes; the properties batching and packing rely on; and the
//! gradient-flow test that every parameter is reached by backward in training mode.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use kubeswift_runtime::model::{
    KvDtype, LoadOptions, LogitRows, Pretrained, PretrainedOptions, SeqSpan, TrainBatch,
};
use serde_json::Value;

use crate::tensors::max_diff;

const FIXTURES: [&str; 3] = ["tiny-Qwen2.5", "tiny-Qwen3", "tiny-Llama-3.2"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load(name: &str, trainable: bool) -> Pretrained {
    let opts = PretrainedOptions {
        model_type: None,
        load: LoadOptions {
            dtype: Some(DType::F32),
            trainable,
            ..LoadOptions::default()
        },
    };
    Pretrained::load(&fixture(name), &opts).unwrap()
}

struct Reference {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Tensor>,
}

fn reference(name: &str) -> Reference {
    let dir = fixture(name);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts: Vec<&Value> = meta["prompts"].as_array().unwrap().iter().collect();
    Reference {
        prompts: prompts.iter().map(|p| ids(&p["input_ids"])).collect(),

        logits: (0..prompts.len())
            .map(|i| tensors[&format!("logits.{i}")].clone())
            .collect(),
    }
}

/// Logits of a fresh prefill of `ids` alone.
fn prefill(p: &Pretrained, ids: &[u32], rows: LogitRows) -> Tensor {
    let mut cache = p.model.new_kv_cache();
    let slot = cache.allocate(ids.len());
    let span = SeqSpan {
        slot,
        start: 0,
        len: ids.len(),
    };
    p.model
        .forward_infer(ids, &[span], &mut cache, rows)
        .unwrap()
}

fn infer_logits(p: &Pretrained, ids: &[u32]) -> Tensor {
    prefill(p, ids, LogitRows::All)
}

fn train_logits(p: &Pretrained, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let batch = TrainBatch {
        input_ids: &input,
        position_ids: None,
        sample_lengths: None,
    };
    let hidden = p.model.forward_train(&batch).unwrap();
    p.model.logits_train(&hidden).unwrap().squeeze(0).unwrap()
}

#[test]
fn detects_model_types_from_folder_names() {
    assert_eq!(load("tiny-Qwen2.5", false).model_type.name, "qwen2_5");
    assert_eq!(load("tiny-Qwen3", false).model_type.name, "qwen3");
    assert_eq!(load("tiny-Llama-3.2", false).model_type.name, "llama3_2");
}

#[test]
fn inference_logits_match_transformers() {
    for name in FIXTURES {
        let p = load(name, false);
        let r = reference(name);
        for (i, ids) in r.prompts.iter().enumerate() {
            let d = max_diff(&infer_logits(&p, ids), &r.logits[i]);
            assert!(d < 1e-4, "{name} prompt {i}: max |diff| {d}");
        }
    }
}

#[test]
fn training_logits_match_transformers() {
    for name in FIXTURES {
        let p = load(name, false);
        let r = reference(name);
        for (i, ids) in r.prompts.iter().enumerate() {
            let d = max_diff(&train_logits(&p, ids), &r.logits[i]);
            assert!(d < 1e-4, "{name} prompt {i}: max |diff| {d}");
        }
    }
}

#[test]
fn decoding_token_by_token_matches_prefill_logits() {
    for name in FIXTURES {
        let p = load(name, false);
        assert_decoding_matches_prefill(&p, &reference(name).prompts[1], 1e-5, name);
    }
}

/// Feeds `ids` one token at a time through the cache and checks each step's logits
/// against the whole prompt's, within `tol`.
fn assert_decoding_matches_prefill(p: &Pretrained, ids: &[u32], tol: f32, label: &str) {
    let full = infer_logits(p, ids);
    let mut cache = p.model.new_kv_cache();
    let slot = cache.allocate(ids.len());
    for (t, &id) in ids.iter().enumerate() {
        let span = SeqSpan {
            slot,
            start: t,
            len: 1,
        };
        let step = p
            .model
            .forward_infer(&[id], &[span], &mut cache, LogitRows::Last)
            .unwrap();
        let d = max_diff(&step.squeeze(0).unwrap(), &full.get(t).unwrap());
        assert!(d < tol, "{label} position {t}: {d}");
    }
}

/// Logits of `ids`' last token, the way generation asks for them.
fn last_logits(p: &Pretrained, ids: &[u32]) -> Vec<f32> {
    prefill(p, ids, LogitRows::Last)
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn last_token_prefill_matches_every_token_prefill_and_caches_the_same_keys() {
    // With only the last token's logits wanted, the last layer runs its queries, MLP and
    // output projection for that token alone; a prompt past the few-rows kernel's limit
    // (16) takes the GEMM for the other layers and the few-rows kernel for those rows.
    for name in FIXTURES {
        let p = load(name, false);
        let r = reference(name);
        let ids: Vec<u32> = r.prompts.iter().flatten().copied().take(40).collect();
        assert!(ids.len() > 16, "{name}: prompts too short for this test");
        let (prompt, next) = (&ids[..ids.len() - 1], ids[ids.len() - 1]);
        let full = infer_logits(&p, prompt);
        let want: Vec<f32> = full.get(prompt.len() - 1).unwrap().to_vec1().unwrap();
        let got = last_logits(&p, prompt);
        let d = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{name}: last-token logits differ by {d}");

        // Both prefills leave the same keys and values: the next decode step's logits are
        // the same bits either way.
        let decode_after = |rows: LogitRows| -> Vec<f32> {
            let mut cache = p.model.new_kv_cache();
            let slot = cache.allocate(ids.len());
            let span = SeqSpan {
                slot,
                start: 0,
                len: prompt.len(),
            };
            p.model
                .forward_infer(prompt, &[span], &mut cache, rows)
                .unwrap();
            let step = SeqSpan {
                slot,
                start: prompt.len(),
                len: 1,
            };
            p.model
                .forward_infer(&[next], &[step], &mut cache, LogitRows::Last)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(
            decode_after(LogitRows::Last),
            decode_after(LogitRows::All),
            "{name}"
        );
    }
}

#[test]
fn an_empty_span_is_an_error_not_a_panic() {
    let p = load("tiny-Qwen2.5", false);
    let mut cache = p.model.new_kv_cache();
    let (a, b) = (cache.allocate(4), cache.allocate(4));
    let spans = [
        SeqSpan {
            slot: a,
            start: 0,
            len: 0,
        },
        SeqSpan {
            slot: b,
            start: 0,
            len: 2,
        },
    ];
    let err = p
        .model
        .forward_infer(&[1, 2], &spans, &mut cache, LogitRows::Last)
        .unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
}

#[test]
fn a_ragged_batch_gives_each_sequence_its_own_logits_exactly() {
    let p = load("tiny-Qwen3", false);
    let r = reference("tiny-Qwen3");
    let (a, b) = (&r.prompts[0], &r.prompts[2]);
    let (last_a, last_b) = batched_last_logits(&p, a, b);
    // Every kernel computes a sequence's rows the same way alone or batched: identical bits.
    assert_eq!(last_a, last_logits(&p, a));
    assert_eq!(last_b, last_logits(&p, b));
}

/// The last tokens' logits of prompts `a` and `b` run as one ragged batch.
fn batched_last_logits(p: &Pretrained, a: &[u32], b: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut cache = p.model.new_kv_cache();
    let (sa, sb) = (cache.allocate(a.len()), cache.allocate(b.len()));
    let spans = [
        SeqSpan {
            slot: sa,
            start: 0,
            len: a.len(),
        },
        SeqSpan {
            slot: sb,
            start: 0,
            len: b.len(),
        },
    ];
    let last = p
        .model
        .forward_infer(&[a, b].concat(), &spans, &mut cache, LogitRows::Last)
        .unwrap();
    let row = |i: usize| last.get(i).unwrap().to_vec1().unwrap();
    (row(0), row(1))
}

#[test]
fn packed_samples_attend_only_within_themselves() {
    let p = load("tiny-Llama-3.2", false);
    let r = reference("tiny-Llama-3.2");
    let (a, b) = (&r.prompts[0], &r.prompts[1]);
    let packed: Vec<u32> = [a.as_slice(), b.as_slice()].concat();
    let input = Tensor::new(packed.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lengths = vec![vec![a.len(), b.len()]];
    let batch = TrainBatch {
        input_ids: &input,
        position_ids: None,
        sample_lengths: Some(&lengths),
    };
    let logits = p
        .model
        .logits_train(&p.model.forward_train(&batch).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d_a = max_diff(&logits.narrow(0, 0, a.len()).unwrap(), &r.logits[0]);
    let d_b = max_diff(&logits.narrow(0, a.len(), b.len()).unwrap(), &r.logits[1]);
    assert!(d_a < 1e-4 && d_b < 1e-4, "{d_a} {d_b}");

    // Explicit position ids that restart per sample give the same result.
    let pos: Vec<u32> = (0..a.len() as u32).chain(0..b.len() as u32).collect();
    let pos = Tensor::new(pos.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let with_pos = TrainBatch {
        position_ids: Some(&pos),
        ..batch
    };
    let again = p
        .model
        .logits_train(&p.model.forward_train(&with_pos).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert!(max_diff(&again, &logits) < 1e-6);
}

#[test]
fn every_parameter_gets_a_gradient_in_training_mode() {
    for name in FIXTURES {
        let p = load(name, true);
        let r = reference(name);
        let ids = &r.prompts[0];
        let input = Tensor::new(&ids[..ids.len() - 1], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let labels = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
        let batch = TrainBatch {
            input_ids: &input,
            position_ids: None,
            sample_lengths: None,
        };
        let logits = p
            .model
            .logits_train(&p.model.forward_train(&batch).unwrap())
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &labels).unwrap();
        let grads = loss.backward().unwrap();
        assert!(!p.model.vars().is_empty());
        assert_eq!(p.model.vars().len(), p.model.named_parameters().len());
        for (param, var) in p.model.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient reaches {param}"));
            let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "{name}: zero gradient for {param}");
        }
    }
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let name = "tiny-Qwen2.5";
    let opts = PretrainedOptions {
        model_type: None,
        load: LoadOptions {
            dtype: Some(DType::BF16),
            ..LoadOptions::default()
        },
    };
    let p = Pretrained::load(&fixture(name), &opts).unwrap();
    assert_eq!(p.model.dtype(), DType::BF16);
    let r = reference(name);
    let d = max_diff(&infer_logits(&p, &r.prompts[0]), &r.logits[0]);
    assert!(d < 0.1, "bf16 logits drift {d}");

    // The KV cache holds the model's dtype, as Hugging Face's does: half the bytes.
    let cache = p.model.new_kv_cache();
    assert_eq!(cache.dtype(), KvDtype::BF16);
    assert_eq!(
        cache.bytes_per_token() * 2,
        load(name, false).model.new_kv_cache().bytes_per_token()
    );
    // Prompt and decode steps read the same rounded keys and values: token by token gives
    // the prompt's logits (up to the products' different summation order).
    assert_decoding_matches_prefill(&p, &r.prompts[1], 1e-4, "bf16");
    // And a sequence decoded beside another gives its bits alone.
    let (a, b) = (&r.prompts[0], &r.prompts[2]);
    let (last_a, last_b) = batched_last_logits(&p, a, b);
    assert_eq!(last_a, last_logits(&p, a));
    assert_eq!(last_b, last_logits(&p, b));
}
