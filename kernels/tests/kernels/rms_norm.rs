use kubeswift_kernels::{reference, rms_norm};

use crate::common::*;

const EPS: f64 = 1e-6;

#[test]
fn matches_reference_and_finite_differences_f32() {
    // 37 is not a multiple of the 16-lane loops; 15 rows split unevenly over tasks.
    let x = rand(1, &[3, 5, 37], 2.0);
    let w = (rand(2, &[37], 0.5) + 1.0).unwrap();
    let (xv, wv) = (var(&x), var(&w));
    let y = rms_norm(xv.as_tensor(), wv.as_tensor(), EPS).unwrap();
    let y_ref = reference::rms_norm(xv.as_tensor(), wv.as_tensor(), EPS).unwrap();
    assert_close("rms_norm forward", &y, &y_ref, F32_TOL);

    let grads = weighted_sum(&y, 9).unwrap().backward().unwrap();
    let grads_ref = weighted_sum(&y_ref, 9).unwrap().backward().unwrap();
    assert_close(
        "rms_norm dx",
        &grad(&grads, &xv),
        &grad(&grads_ref, &xv),
        F32_TOL,
    );
    assert_close(
        "rms_norm dw",
        &grad(&grads, &wv),
        &grad(&grads_ref, &wv),
        F32_TOL,
    );

    let loss = |xs: &[candle_core::Tensor]| weighted_sum(&rms_norm(&xs[0], &xs[1], EPS)?, 9);
    check_finite_difference(
        "rms_norm dx",
        &[x.clone(), w.clone()],
        0,
        &grad(&grads, &xv),
        loss,
    );
    check_finite_difference("rms_norm dw", &[x, w], 1, &grad(&grads, &wv), loss);
}

#[test]
fn bf16_storage_matches_f32_reference() {
    let x = bf16(&rand(3, &[4, 300], 3.0));
    let w = bf16(&(rand(4, &[300], 0.5) + 1.0).unwrap());
    let (xv, wv) = (var(&x), var(&w));
    let y = rms_norm(xv.as_tensor(), wv.as_tensor(), EPS).unwrap();
    assert_eq!(y.dtype(), candle_core::DType::BF16);
    let (xf, wf) = (var(&widened(&x)), var(&widened(&w)));
    let y_ref = reference::rms_norm(xf.as_tensor(), wf.as_tensor(), EPS).unwrap();
    assert_close("bf16 rms_norm forward", &y, &y_ref, BF16_TOL);
    let g = weighted_sum(&y, 5).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, 5).unwrap().backward().unwrap();
    assert_close(
        "bf16 rms_norm dx",
        &grad(&g, &xv),
        &grad(&g_ref, &xf),
        BF16_TOL,
    );
    assert_close(
        "bf16 rms_norm dw",
        &grad(&g, &wv),
        &grad(&g_ref, &wf),
        BF16_TOL,
    );
}

#[test]
fn frozen_weight_gets_no_gradient_and_bad_shapes_are_named() {
    let x = var(&rand(5, &[2, 8], 1.0));
    let w = rand(6, &[8], 1.0);
    let grads = weighted_sum(&rms_norm(x.as_tensor(), &w, EPS).unwrap(), 1)
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&w).is_none());
    assert!(grads.get(x.as_tensor()).is_some());
    let err = rms_norm(x.as_tensor(), &rand(6, &[7], 1.0), EPS).unwrap_err();
    assert!(err.to_string().contains("`w`"), "{err}");
}
