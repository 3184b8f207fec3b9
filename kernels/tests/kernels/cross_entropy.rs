use candle_core::{DType, Tensor};
use kubeswift_kernels::{CrossEntropyOptions, IGNORE_INDEX, linear_cross_entropy, reference};

use crate::common::*;

/// Small chunks so that 13 tokens take several chunks (3 rows of a 150-word vocabulary).
fn small_chunks() -> CrossEntropyOptions {
    CrossEntropyOptions {
        chunk_bytes: 3 * 4 * 150,
        ..Default::default()
    }
}

fn labels() -> Tensor {
    Tensor::new(
        &[3i64, -100, 149, 0, 7, -100, -100, 42, 42, 99, 1, 148, 5],
        &cpu(),
    )
    .unwrap()
}

#[test]
fn matches_reference_with_ignored_tokens_f32() {
    let hidden = rand(31, &[13, 20], 1.0);
    let weight = rand(32, &[150, 20], 1.0);
    let (hv, wv) = (var(&hidden), var(&weight));
    let ce =
        linear_cross_entropy(hv.as_tensor(), wv.as_tensor(), &labels(), small_chunks()).unwrap();
    assert_eq!(ce.count, 10);
    let sum_ref = reference::linear_cross_entropy_sum(
        hv.as_tensor(),
        wv.as_tensor(),
        &labels(),
        IGNORE_INDEX,
    )
    .unwrap();
    assert_close("loss sum", &ce.loss_sum, &sum_ref, F32_TOL);
    let mean = ce.mean().unwrap();
    let mean_ref = (sum_ref.clone() / 10.0).unwrap();
    assert_close("loss mean", &mean, &mean_ref, F32_TOL);

    let g = mean.backward().unwrap();
    let g_ref = mean_ref.backward().unwrap();
    let dh = grad(&g, &hv);
    assert_close("d_hidden", &dh, &grad(&g_ref, &hv), F32_TOL);
    assert_close("d_weight", &grad(&g, &wv), &grad(&g_ref, &wv), F32_TOL);
    // Ignored tokens get exactly zero gradient.
    let rows = dh.to_vec2::<f32>().unwrap();
    assert!(
        rows[1]
            .iter()
            .chain(&rows[5])
            .chain(&rows[6])
            .all(|&v| v == 0.0)
    );

    // Token accuracy agrees with the arg-max of the materialised logits.
    let logits = hidden.matmul(&weight.t().unwrap()).unwrap();
    let argmax = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let labels = labels().to_vec1::<i64>().unwrap();
    let hits = argmax
        .iter()
        .zip(&labels)
        .filter(|(a, l)| **l >= 0 && **a as i64 == **l)
        .count();
    assert_eq!(ce.correct, hits);
    let missed: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] >= 0 && argmax[i] as i64 != labels[i])
        .collect();
    assert_eq!(ce.missed, missed);

    let loss = |xs: &[Tensor]| {
        linear_cross_entropy(&xs[0], &xs[1], &labels_tensor(), small_chunks())?
            .loss_sum
            .to_dtype(DType::F64)
    };
    let g_sum = ce.loss_sum.backward().unwrap();
    let inputs = [hidden, weight];
    check_finite_difference("d_hidden", &inputs, 0, &grad(&g_sum, &hv), loss);
    check_finite_difference("d_weight", &inputs, 1, &grad(&g_sum, &wv), loss);
}

fn labels_tensor() -> Tensor {
    labels()
}

#[test]
fn frozen_lm_head_gets_no_gradient_and_bf16_matches() {
    let hidden = bf16(&rand(33, &[13, 20], 1.0));
    let weight = bf16(&rand(34, &[150, 20], 1.0));
    let hv = var(&hidden);
    let ce = linear_cross_entropy(hv.as_tensor(), &weight, &labels(), small_chunks()).unwrap();
    let hf = var(&widened(&hidden));
    let sum_ref = reference::linear_cross_entropy_sum(
        hf.as_tensor(),
        &widened(&weight),
        &labels(),
        IGNORE_INDEX,
    )
    .unwrap();
    assert_close("bf16 loss sum", &ce.loss_sum, &sum_ref, 1e-5);
    let g = ce.loss_sum.backward().unwrap();
    assert!(g.get(&weight).is_none());
    let dh = grad(&g, &hv);
    assert_eq!(dh.dtype(), DType::BF16);
    assert_close(
        "bf16 d_hidden",
        &dh,
        &grad(&sum_ref.backward().unwrap(), &hf),
        BF16_TOL,
    );
}

#[test]
fn all_labels_ignored_gives_zero_loss_and_zero_gradients() {
    let hv = var(&rand(35, &[4, 8], 1.0));
    let weight = rand(36, &[10, 8], 1.0);
    let labels = Tensor::new(&[-100i64; 4], &cpu()).unwrap();
    let ce = linear_cross_entropy(hv.as_tensor(), &weight, &labels, Default::default()).unwrap();
    assert_eq!((ce.count, ce.correct), (0, 0));
    let mean = ce.mean().unwrap();
    assert_eq!(mean.to_scalar::<f32>().unwrap(), 0.0);
    let dh = grad(&mean.backward().unwrap(), &hv);
    assert!(
        dh.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
}

#[test]
fn out_of_vocabulary_label_is_an_error() {
    let labels = Tensor::new(&[1i64, 10], &cpu()).unwrap();
    let err = linear_cross_entropy(
        &rand(1, &[2, 4], 1.0),
        &rand(2, &[10, 4], 1.0),
        &labels,
        Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("label 10 at token 1"), "{err}");
}
