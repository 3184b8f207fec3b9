use kubeswift_kernels::{reference, silu_mul};

use crate::common::*;

#[test]
fn matches_reference_and_finite_differences_f32() {
    // 16 * 1024 + 77 elements: one full rayon chunk plus an odd tail.
    let g = rand(11, &[7, 2351], 6.0);
    let u = rand(12, &[7, 2351], 2.0);
    let (gv, uv) = (var(&g), var(&u));
    let y = silu_mul(gv.as_tensor(), uv.as_tensor()).unwrap();
    let y_ref = reference::silu_mul(gv.as_tensor(), uv.as_tensor()).unwrap();
    assert_close("silu_mul forward", &y, &y_ref, F32_TOL);
    let grads = weighted_sum(&y, 3).unwrap().backward().unwrap();
    let grads_ref = weighted_sum(&y_ref, 3).unwrap().backward().unwrap();
    assert_close(
        "silu_mul d_gate",
        &grad(&grads, &gv),
        &grad(&grads_ref, &gv),
        F32_TOL,
    );
    assert_close(
        "silu_mul d_up",
        &grad(&grads, &uv),
        &grad(&grads_ref, &uv),
        F32_TOL,
    );
    let small_g = rand(13, &[3, 11], 4.0);
    let small_u = rand(14, &[3, 11], 1.0);
    let (sg, su) = (var(&small_g), var(&small_u));
    let grads = weighted_sum(&silu_mul(sg.as_tensor(), su.as_tensor()).unwrap(), 4)
        .unwrap()
        .backward()
        .unwrap();
    let loss = |xs: &[candle_core::Tensor]| weighted_sum(&silu_mul(&xs[0], &xs[1])?, 4);
    let inputs = [small_g, small_u];
    check_finite_difference("silu_mul d_gate", &inputs, 0, &grad(&grads, &sg), loss);
    check_finite_difference("silu_mul d_up", &inputs, 1, &grad(&grads, &su), loss);
}

#[test]
fn bf16_storage_matches_f32_reference() {
    let g = bf16(&rand(15, &[5, 97], 5.0));
    let u = bf16(&rand(16, &[5, 97], 2.0));
    let (gv, uv) = (var(&g), var(&u));
    let y = silu_mul(gv.as_tensor(), uv.as_tensor()).unwrap();
    let (gf, uf) = (var(&widened(&g)), var(&widened(&u)));
    let y_ref = reference::silu_mul(gf.as_tensor(), uf.as_tensor()).unwrap();
    assert_close("bf16 silu_mul", &y, &y_ref, BF16_TOL);
    let gr = weighted_sum(&y, 2).unwrap().backward().unwrap();
    let gr_ref = weighted_sum(&y_ref, 2).unwrap().backward().unwrap();
    assert_close(
        "bf16 silu_mul d_gate",
        &grad(&gr, &gv),
        &grad(&gr_ref, &gf),
        BF16_TOL,
    );
    assert_close(
        "bf16 silu_mul d_up",
        &grad(&gr, &uv),
        &grad(&gr_ref, &uf),
        BF16_TOL,
    );
}

#[test]
fn mismatched_shapes_are_an_error() {
    let err = silu_mul(&rand(1, &[2, 3], 1.0), &rand(1, &[3, 2], 1.0)).unwrap_err();
    assert!(err.to_string().contains("`up`"), "{err}");
}
