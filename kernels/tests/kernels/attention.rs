use candle_core::{DType, Tensor};
use kubeswift_kernels::{AttnMask, attention, reference};

use crate::common::*;

struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

/// Runs the kernel and the reference on the same inputs (q and v as transposed views of
/// `[b, t, h, d]` buffers, as a model produces them) and compares outputs and gradients.
fn check(c: Case, mask: &AttnMask, seed: u64, dtype: DType, tol: f64) {
    let q0 = rand(seed, &[c.b, c.tq, c.h, c.d], 1.5)
        .to_dtype(dtype)
        .unwrap();
    let k0 = rand(seed + 1, &[c.b, c.hkv, c.tk, c.d], 1.5)
        .to_dtype(dtype)
        .unwrap();
    let v0 = rand(seed + 2, &[c.b, c.tk, c.hkv, c.d], 1.0)
        .to_dtype(dtype)
        .unwrap();
    let (qv, kv, vv) = (var(&q0), var(&k0), var(&v0));
    let q = qv.as_tensor().transpose(1, 2).unwrap();
    let k = kv.as_tensor().clone();
    let v = vv.as_tensor().transpose(1, 2).unwrap();
    let y = attention(&q, &k, &v, mask).unwrap();
    assert_eq!(y.dims(), &[c.b, c.h, c.tq, c.d]);
    assert!(
        y.transpose(1, 2).unwrap().is_contiguous(),
        "output follows q's memory order"
    );

    // The reference runs in f32 on the exact values the kernel saw.
    let (qf, kf, vf) = (
        var(&q0.to_dtype(DType::F32).unwrap()),
        var(&k0.to_dtype(DType::F32).unwrap()),
        var(&v0.to_dtype(DType::F32).unwrap()),
    );
    let scale = 1.0 / (c.d as f64).sqrt();
    let y_ref = reference::attention(
        &qf.as_tensor().transpose(1, 2).unwrap(),
        kf.as_tensor(),
        &vf.as_tensor().transpose(1, 2).unwrap(),
        mask,
        scale,
    )
    .unwrap();
    assert_close("attention forward", &y, &y_ref, tol);
    let g = weighted_sum(&y, seed + 3).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, seed + 3).unwrap().backward().unwrap();
    assert_close("attention dq", &grad(&g, &qv), &grad(&g_ref, &qf), tol);
    assert_close("attention dk", &grad(&g, &kv), &grad(&g_ref, &kf), tol);
    assert_close("attention dv", &grad(&g, &vv), &grad(&g_ref, &vf), tol);
}

fn f32_case(c: Case, mask: &AttnMask, seed: u64) {
    check(c, mask, seed, DType::F32, F32_TOL);
}

#[test]
fn gqa_ratios_1_2_7_with_sizes_off_the_tile_grid() {
    for (h, hkv) in [(2, 2), (4, 2), (7, 1), (14, 2)] {
        let c = Case {
            b: 2,
            h,
            hkv,
            tq: 67,
            tk: 67,
            d: 24,
        };
        f32_case(c, &AttnMask::causal(), 100 + h as u64);
    }
}

#[test]
fn queries_after_a_kv_cache_prefill_and_decode() {
    f32_case(
        Case {
            b: 2,
            h: 4,
            hkv: 2,
            tq: 5,
            tk: 70,
            d: 16,
        },
        &AttnMask::causal(),
        200,
    );
    f32_case(
        Case {
            b: 3,
            h: 6,
            hkv: 3,
            tq: 1,
            tk: 131,
            d: 8,
        },
        &AttnMask::causal(),
        201,
    );
    // Bidirectional with fewer queries than keys.
    f32_case(
        Case {
            b: 1,
            h: 2,
            hkv: 1,
            tq: 9,
            tk: 33,
            d: 8,
        },
        &AttnMask::full(),
        202,
    );
}

#[test]
fn left_and_right_padding() {
    // Row 0 is left padded by 3 (its first queries see nothing: zeros, no gradient),
    // row 1 right padded by 4; decode-style offset too.
    let mut pad = vec![1u8; 2 * 70];
    pad[..3].fill(0);
    pad[70 + 66..].fill(0);
    let pad = Tensor::from_vec(pad, (2, 70), &cpu()).unwrap();
    let mask = AttnMask::causal().with_key_padding(pad.clone());
    f32_case(
        Case {
            b: 2,
            h: 4,
            hkv: 2,
            tq: 70,
            tk: 70,
            d: 16,
        },
        &mask,
        300,
    );
    f32_case(
        Case {
            b: 2,
            h: 4,
            hkv: 2,
            tq: 3,
            tk: 70,
            d: 16,
        },
        &mask,
        301,
    );
}

#[test]
fn packed_sequences_stay_within_their_sample() {
    let mask = AttnMask::packed_causal(&[0, 20, 21, 70, 75], &cpu()).unwrap();
    f32_case(
        Case {
            b: 1,
            h: 4,
            hkv: 2,
            tq: 75,
            tk: 75,
            d: 16,
        },
        &mask,
        400,
    );
    // The same through explicit per-token segment ids, two rows, plus left padding.
    let ids = Tensor::new(
        &[[0u32, 0, 0, 1, 1, 1, 1, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 7]],
        &cpu(),
    )
    .unwrap();
    let pad = Tensor::new(
        &[[1u32, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1]],
        &cpu(),
    )
    .unwrap();
    let mask = AttnMask::causal()
        .with_segment_ids(ids)
        .with_key_padding(pad);
    f32_case(
        Case {
            b: 2,
            h: 2,
            hkv: 2,
            tq: 9,
            tk: 9,
            d: 8,
        },
        &mask,
        401,
    );
}

#[test]
fn sliding_window() {
    let mask = AttnMask::causal().with_window(9);
    f32_case(
        Case {
            b: 1,
            h: 2,
            hkv: 1,
            tq: 80,
            tk: 80,
            d: 8,
        },
        &mask,
        500,
    );
}

/// bf16 attention against the f32 reference, relative to the largest value: the outputs are
/// stored in bf16 (2^-9 relative) and, as in PyTorch, the probabilities and score gradients
/// are rounded to bf16 for their products; the worst measured is 4.2e-3 (dV). Tighter than the
/// shared bf16 tolerance, so that a 1% error in one product (a wrong scale, say) fails.
const ATTENTION_BF16_TOL: f64 = 6e-3;

#[test]
fn bf16_storage_matches_f32_reference() {
    let c = Case {
        b: 1,
        h: 7,
        hkv: 1,
        tq: 70,
        tk: 70,
        d: 32,
    };
    check(c, &AttnMask::causal(), 600, DType::BF16, ATTENTION_BF16_TOL);
    // Several batches and KV heads: the bf16 products read K and V in place at strides.
    let c = Case {
        b: 2,
        h: 6,
        hkv: 2,
        tq: 90,
        tk: 90,
        d: 16,
    };
    check(c, &AttnMask::causal(), 610, DType::BF16, ATTENTION_BF16_TOL);
}

#[test]
fn finite_differences() {
    let pad = Tensor::new(&[[0u32, 1, 1, 1, 1, 1, 1, 1, 1]], &cpu()).unwrap();
    let mask = AttnMask::causal().with_key_padding(pad);
    let q = rand(700, &[1, 4, 9, 8], 1.0);
    let k = rand(701, &[1, 2, 9, 8], 1.0);
    let v = rand(702, &[1, 2, 9, 8], 1.0);
    let (qv, kv, vv) = (var(&q), var(&k), var(&v));
    let y = attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), &mask).unwrap();
    let g = weighted_sum(&y, 703).unwrap().backward().unwrap();
    let loss = |xs: &[Tensor]| weighted_sum(&attention(&xs[0], &xs[1], &xs[2], &mask)?, 703);
    let inputs = [q, k, v];
    check_finite_difference("attention dq", &inputs, 0, &grad(&g, &qv), loss);
    check_finite_difference("attention dk", &inputs, 1, &grad(&g, &kv), loss);
    check_finite_difference("attention dv", &inputs, 2, &grad(&g, &vv), loss);
}

#[test]
fn bad_inputs_are_named() {
    let q = rand(1, &[1, 3, 4, 8], 1.0);
    let k = rand(2, &[1, 2, 4, 8], 1.0);
    let err = attention(&q, &k, &k, &AttnMask::causal()).unwrap_err();
    assert!(err.to_string().contains("`k`"), "{err}");
    let k = rand(2, &[1, 1, 3, 8], 1.0);
    let err = attention(&q, &k, &k, &AttnMask::causal()).unwrap_err();
    assert!(err.to_string().contains("q_len <= kv_len"), "{err}");
    let ids = Tensor::new(&[[0u32, 1, 0]], &cpu()).unwrap();
    let q = rand(1, &[1, 1, 3, 8], 1.0);
    let err = attention(&q, &k, &k, &AttnMask::causal().with_segment_ids(ids)).unwrap_err();
    assert!(err.to_string().contains("contiguous runs"), "{err}");
}

/// A NaN query row or NaN keys make NaN outputs where they are seen, as PyTorch's
/// attention does: every score of such a row is NaN, which the running max skips, and the
/// row must not be taken for one with no visible key (zeros), or a NaN in q_proj or k_proj
/// would train on unseen. Rows that never see the NaN stay finite.
#[test]
fn nan_queries_and_keys_give_nan_outputs_not_zeros() {
    let (b, h, t, d) = (1, 2, 70, 16);
    let q = rand(700, &[b, h, t, d], 1.0);
    let k = rand(701, &[b, h, t, d], 1.0);
    let v = rand(702, &[b, h, t, d], 1.0);
    let nan_row = |x: &Tensor, head: usize, row: usize| -> Tensor {
        let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = (head * t + row) * d;
        values[at..at + d].fill(f32::NAN);
        Tensor::from_vec(values, x.dims(), &cpu()).unwrap()
    };
    let rows = |y: &Tensor, head: usize| -> Vec<Vec<f32>> {
        y.get(0)
            .unwrap()
            .get(head)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let causal = AttnMask::causal();
    // Query 40 of head 0 is NaN: its output row, and only it, is NaN.
    let y = attention(&nan_row(&q, 0, 40), &k, &v, &causal).unwrap();
    for (i, row) in rows(&y, 0).iter().enumerate() {
        assert_eq!(row.iter().all(|x| x.is_nan()), i == 40, "row {i}: {row:?}");
        assert!(i == 40 || row.iter().all(|x| x.is_finite()), "row {i}");
    }
    assert!(rows(&y, 1).iter().flatten().all(|x| x.is_finite()));
    // Key 0 of head 1 is NaN: every query of head 1 sees it (causal), so all are NaN.
    let y = attention(&q, &nan_row(&k, 1, 0), &v, &causal).unwrap();
    assert!(rows(&y, 1).iter().flatten().all(|x| x.is_nan()));
    assert!(rows(&y, 0).iter().flatten().all(|x| x.is_finite()));
}
