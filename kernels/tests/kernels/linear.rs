use candle_core::{DType, Tensor};
use kubeswift_kernels::cpu::isa::{self, Isa};
use kubeswift_kernels::{
    LoraDropout, frozen_linear, frozen_linear_grad_only, frozen_linear_replay, keep_packed_weights,
    lora_linear, lora_linear_grad_only, lora_linear_replay, lora_linear_with_dropout, reference,
};

use crate::common::*;

#[test]
fn frozen_linear_matches_reference_and_skips_the_weight() {
    // 3 x 67 rows, 45 -> 70 features: off every microkernel tile size.
    let x = rand(41, &[3, 67, 45], 1.0);
    let w = rand(42, &[70, 45], 0.3);
    let b = rand(43, &[70], 0.3);
    let (xv, wv, bv) = (var(&x), var(&w), var(&b));
    let y = frozen_linear(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor())).unwrap();
    let y_ref = reference::linear(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor())).unwrap();
    assert_close("frozen_linear forward", &y, &y_ref, F32_TOL);
    let g = weighted_sum(&y, 1).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, 1).unwrap().backward().unwrap();
    assert_close(
        "frozen_linear dx",
        &grad(&g, &xv),
        &grad(&g_ref, &xv),
        F32_TOL,
    );
    assert!(
        g.get(wv.as_tensor()).is_none(),
        "frozen weight must get no gradient"
    );
    assert!(
        g.get(bv.as_tensor()).is_none(),
        "frozen bias must get no gradient"
    );
    let loss = |xs: &[Tensor]| weighted_sum(&frozen_linear(&xs[0], &w, Some(&b))?, 1);
    check_finite_difference("frozen_linear dx", &[x], 0, &grad(&g, &xv), loss);
}

#[test]
fn lora_linear_matches_reference_f32() {
    let x = rand(44, &[2, 33, 40], 1.0);
    let w = rand(45, &[50, 40], 0.3);
    let a = rand(46, &[5, 40], 0.3);
    let bl = rand(47, &[50, 5], 0.3);
    let (xv, av, bv) = (var(&x), var(&a), var(&bl));
    let y = lora_linear(
        xv.as_tensor(),
        &w,
        None,
        av.as_tensor(),
        bv.as_tensor(),
        2.0,
    )
    .unwrap();
    let y_ref = reference::lora_linear(
        xv.as_tensor(),
        &w,
        None,
        av.as_tensor(),
        bv.as_tensor(),
        2.0,
    )
    .unwrap();
    assert_close("lora forward", &y, &y_ref, F32_TOL);
    let g = weighted_sum(&y, 2).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, 2).unwrap().backward().unwrap();
    assert_close("lora dx", &grad(&g, &xv), &grad(&g_ref, &xv), F32_TOL);
    assert_close("lora dA", &grad(&g, &av), &grad(&g_ref, &av), F32_TOL);
    assert_close("lora dB", &grad(&g, &bv), &grad(&g_ref, &bv), F32_TOL);
    let loss =
        |xs: &[Tensor]| weighted_sum(&lora_linear(&xs[0], &w, None, &xs[1], &xs[2], 2.0)?, 2);
    let inputs = [x, a, bl];
    check_finite_difference("lora dx", &inputs, 0, &grad(&g, &xv), loss);
    check_finite_difference("lora dA", &inputs, 1, &grad(&g, &av), loss);
    check_finite_difference("lora dB", &inputs, 2, &grad(&g, &bv), loss);
}

#[test]
fn lora_linear_bf16_base_with_f32_adapter() {
    let x = bf16(&rand(48, &[37, 64], 1.0));
    let w = bf16(&rand(49, &[96, 64], 0.3));
    let b = bf16(&rand(50, &[96], 0.3));
    let a = rand(51, &[8, 64], 0.3);
    let bl = rand(52, &[96, 8], 0.3);
    let (xv, av, bv) = (var(&x), var(&a), var(&bl));
    let y = lora_linear(
        xv.as_tensor(),
        &w,
        Some(&b),
        av.as_tensor(),
        bv.as_tensor(),
        0.5,
    )
    .unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let xf = var(&widened(&x));
    let y_ref = reference::lora_linear(
        xf.as_tensor(),
        &widened(&w),
        Some(&widened(&b)),
        av.as_tensor(),
        bv.as_tensor(),
        0.5,
    )
    .unwrap();
    assert_close("bf16 lora forward", &y, &y_ref, BF16_TOL);
    let g = weighted_sum(&y, 3).unwrap().backward().unwrap();
    let da = grad(&g, &av);
    assert_eq!(
        da.dtype(),
        DType::F32,
        "adapter gradients keep the adapter's dtype"
    );
    let g_ref = weighted_sum(&y_ref, 3).unwrap().backward().unwrap();
    assert_close("bf16 lora dx", &grad(&g, &xv), &grad(&g_ref, &xf), BF16_TOL);
    assert_close("bf16 lora dA", &da, &grad(&g_ref, &av), BF16_TOL);
    assert_close("bf16 lora dB", &grad(&g, &bv), &grad(&g_ref, &bv), BF16_TOL);
}

#[test]
fn lora_dropout_is_reproducible_and_differentiable() {
    let x = rand(53, &[9, 24], 1.0);
    let w = rand(54, &[12, 24], 0.3);
    let a = rand(55, &[4, 24], 0.3);
    let bl = rand(56, &[12, 4], 0.3);
    let drop = Some(LoraDropout { p: 0.3, seed: 7 });
    let y1 = lora_linear_with_dropout(&x, &w, None, &a, &bl, 1.0, drop).unwrap();
    let y2 = lora_linear_with_dropout(&x, &w, None, &a, &bl, 1.0, drop).unwrap();
    assert_close("same seed, same mask", &y1, &y2, 0.0);
    let plain = lora_linear(&x, &w, None, &a, &bl, 1.0).unwrap();
    let diff = (&y1 - &plain)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-3, "dropout changed nothing");
    let (xv, av, bv) = (var(&x), var(&a), var(&bl));
    let y = lora_linear_with_dropout(
        xv.as_tensor(),
        &w,
        None,
        av.as_tensor(),
        bv.as_tensor(),
        1.0,
        drop,
    )
    .unwrap();
    let g = weighted_sum(&y, 4).unwrap().backward().unwrap();
    let loss = |xs: &[Tensor]| {
        weighted_sum(
            &lora_linear_with_dropout(&xs[0], &w, None, &xs[1], &xs[2], 1.0, drop)?,
            4,
        )
    };
    let inputs = [x, a, bl];
    check_finite_difference("dropout lora dx", &inputs, 0, &grad(&g, &xv), loss);
    check_finite_difference("dropout lora dA", &inputs, 1, &grad(&g, &av), loss);
    check_finite_difference("dropout lora dB", &inputs, 2, &grad(&g, &bv), loss);
}

/// The gradient-only forms (gradient checkpointing's recomputation of a layer's last
/// projection) give exactly the gradients of the ordinary ops, and skip the product.
#[test]
fn grad_only_linears_give_the_same_gradients_without_the_product() {
    let x = rand(61, &[2, 13, 40], 1.0);
    let w = rand(62, &[50, 40], 0.3);
    let bias = rand(63, &[50], 0.3);
    let xv = var(&x);
    let y = frozen_linear(xv.as_tensor(), &w, Some(&bias)).unwrap();
    let y0 = frozen_linear_grad_only(xv.as_tensor(), &w, Some(&bias)).unwrap();
    assert_eq!(y0.dims(), y.dims());
    let zeros = y0
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(zeros, 0.0, "the grad-only forward computes no product");
    let g = weighted_sum(&y, 3).unwrap().backward().unwrap();
    let g0 = weighted_sum(&y0, 3).unwrap().backward().unwrap();
    assert_close("frozen grad-only dx", &grad(&g0, &xv), &grad(&g, &xv), 0.0);

    let a = rand(64, &[5, 40], 0.3);
    let bl = rand(65, &[50, 5], 0.3);
    for drop in [None, Some(LoraDropout { p: 0.25, seed: 9 })] {
        let (xv, av, bv) = (var(&x), var(&a), var(&bl));
        let args = (xv.as_tensor(), av.as_tensor(), bv.as_tensor());
        let y =
            lora_linear_with_dropout(args.0, &w, Some(&bias), args.1, args.2, 2.0, drop).unwrap();
        let y0 = lora_linear_grad_only(args.0, &w, Some(&bias), args.1, args.2, 2.0, drop).unwrap();
        let zeros = y0
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(zeros, 0.0, "the grad-only LoRA forward computes no product");
        let g = weighted_sum(&y, 4).unwrap().backward().unwrap();
        let g0 = weighted_sum(&y0, 4).unwrap().backward().unwrap();
        for (name, v) in [("dx", &xv), ("dA", &av), ("dB", &bv)] {
            assert_close(
                &format!("lora grad-only {name}"),
                &grad(&g0, v),
                &grad(&g, v),
                0.0,
            );
        }
    }
}

/// The replayed forms (selective recomputation) return the saved output as it is, without
/// computing the product, and give exactly the ordinary ops' gradients.
#[test]
fn replayed_linears_return_the_saved_output_and_the_same_gradients() {
    let x = rand(71, &[2, 13, 40], 1.0);
    let w = rand(72, &[50, 40], 0.3);
    let bias = rand(73, &[50], 0.3);
    // A stand-in for the saved output that the product could never give: what comes out
    // is what was saved, not a recomputation.
    let marker = rand(74, &[2, 13, 50], 5.0);
    let xv = var(&x);
    let y = frozen_linear(xv.as_tensor(), &w, Some(&bias)).unwrap();
    let y1 = frozen_linear_replay(xv.as_tensor(), &w, Some(&bias), &marker).unwrap();
    assert_close("frozen replay value", &y1, &marker, 0.0);
    let g = weighted_sum(&y, 3).unwrap().backward().unwrap();
    let g1 = weighted_sum(&y1, 3).unwrap().backward().unwrap();
    assert_close("frozen replay dx", &grad(&g1, &xv), &grad(&g, &xv), 0.0);

    let a = rand(75, &[5, 40], 0.3);
    let bl = rand(76, &[50, 5], 0.3);
    for drop in [None, Some(LoraDropout { p: 0.25, seed: 9 })] {
        let (xv, av, bv) = (var(&x), var(&a), var(&bl));
        let args = (xv.as_tensor(), av.as_tensor(), bv.as_tensor());
        let y =
            lora_linear_with_dropout(args.0, &w, Some(&bias), args.1, args.2, 2.0, drop).unwrap();
        let saved = y.detach();
        let y1 =
            lora_linear_replay(args.0, &w, Some(&bias), args.1, args.2, 2.0, drop, &saved).unwrap();
        assert_close("lora replay value", &y1, &y, 0.0);
        let g = weighted_sum(&y, 4).unwrap().backward().unwrap();
        let g1 = weighted_sum(&y1, 4).unwrap().backward().unwrap();
        for (name, v) in [("dx", &xv), ("dA", &av), ("dB", &bv)] {
            assert_close(
                &format!("lora replay {name}"),
                &grad(&g1, v),
                &grad(&g, v),
                0.0,
            );
        }
    }
}

#[test]
fn a_saved_output_of_another_shape_or_dtype_is_refused() {
    let x = rand(81, &[3, 8], 1.0);
    let w = rand(82, &[6, 8], 0.3);
    let wrong_width = rand(83, &[3, 5], 1.0);
    let err = frozen_linear_replay(&x, &w, None, &wrong_width).unwrap_err();
    assert!(err.to_string().contains("saved"), "{err}");
    let wrong_dtype = rand(84, &[3, 6], 1.0).to_dtype(DType::BF16).unwrap();
    let (a, bl) = (rand(85, &[2, 8], 0.3), rand(86, &[6, 2], 0.3));
    let err = lora_linear_replay(&x, &w, None, &a, &bl, 1.0, None, &wrong_dtype).unwrap_err();
    assert!(err.to_string().contains("saved"), "{err}");
}

/// dx of `frozen_linear(x, w)` under a fixed weighted-sum loss, as f32 bits.
fn frozen_dx_bits(x: &Tensor, w: &Tensor) -> Vec<u32> {
    let xv = var(x);
    let y = frozen_linear(xv.as_tensor(), w, None).unwrap();
    let g = weighted_sum(&y, 2).unwrap().backward().unwrap();
    let dx = grad(&g, &xv).to_dtype(DType::F32).unwrap();
    let values: Vec<f32> = dx.flatten_all().unwrap().to_vec1().unwrap();
    values.into_iter().map(f32::to_bits).collect()
}

#[test]
fn kept_packed_weights_give_the_same_bits_and_skip_variables() {
    let x = bf16(&rand(44, &[2, 70, 96], 1.0));
    let w = bf16(&rand(45, &[130, 96], 0.3));
    let plain = frozen_dx_bits(&x, &w);
    let scope = keep_packed_weights(1 << 30);
    let first = frozen_dx_bits(&x, &w);
    let kept = scope.bytes();
    // The second backward reads the kept packing.
    let second = frozen_dx_bits(&x, &w);
    assert!(plain == first && first == second, "kept packing changed dx");
    if isa::active().min(isa::detected()) >= Isa::Avx512Bf16 {
        assert!(kept >= 130 * 96 * 2, "the frozen bf16 weight was not kept");
    } else {
        assert_eq!(kept, 0, "nothing to keep without the bf16 kernel");
    }
    assert_eq!(scope.bytes(), kept, "a hit must not pack again");
    // A weight that is being trained may change between steps: never kept.
    let trained = var(&w);
    assert_eq!(frozen_dx_bits(&x, trained.as_tensor()), plain);
    assert_eq!(scope.bytes(), kept, "a Var weight was kept");
    drop(scope);
    // Over budget: packed per product as before, nothing kept.
    let small = keep_packed_weights(1000);
    assert_eq!(frozen_dx_bits(&x, &w), plain);
    assert_eq!(small.bytes(), 0);
}

#[test]
fn bf16_outputs_never_see_an_earlier_result() {
    // A bf16 layer computes in reused f32 scratch: NaN left there by an earlier product
    // must be overwritten, for the frozen and the LoRA op, with and without a bias.
    let w = bf16(&rand(47, &[64, 40], 0.3));
    let bias = bf16(&rand(49, &[64], 0.3));
    let (a, b) = (rand(50, &[4, 40], 0.3), rand(51, &[64, 4], 0.3));
    let poisoned = bf16(&Tensor::full(f32::NAN, (3, 50, 40), &cpu()).unwrap());
    let x = bf16(&rand(48, &[2, 50, 40], 1.0));
    for with_bias in [false, true] {
        let bias = with_bias.then_some(&bias);
        let _ = frozen_linear(&poisoned, &w, bias).unwrap();
        let y = frozen_linear(&x, &w, bias).unwrap();
        let y_ref = reference::linear(&widened(&x), &widened(&w), bias.map(widened).as_ref());
        assert_close("frozen after NaN", &y, &y_ref.unwrap(), BF16_TOL);
        let _ = lora_linear(&poisoned, &w, bias, &a, &b, 2.0).unwrap();
        let y = lora_linear(&x, &w, bias, &a, &b, 2.0).unwrap();
        let y_ref = reference::lora_linear(
            &widened(&x),
            &widened(&w),
            bias.map(widened).as_ref(),
            &a,
            &b,
            2.0,
        );
        assert_close("lora after NaN", &y, &y_ref.unwrap(), BF16_TOL);
    }
}
