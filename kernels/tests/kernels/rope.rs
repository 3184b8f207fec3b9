use candle_core::{Device, Tensor};
use kubeswift_kernels::{reference, rope, rope_tables};

use crate::common::*;

fn tables(half: usize, max_pos: usize) -> (Tensor, Tensor) {
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / (2 * half) as f32))
        .collect();
    rope_tables(&inv, max_pos, &Device::Cpu).unwrap()
}

#[test]
fn packed_positions_on_a_transposed_view_f32() {
    let (cos, sin) = tables(5, 16);
    // Batch 0 packs two samples (positions restart); batch 1 continues a KV cache at 5.
    let positions =
        Tensor::new(&[[0u32, 1, 2, 3, 0, 1, 2], [5, 6, 7, 8, 9, 10, 11]], &cpu()).unwrap();
    let base = rand(21, &[2, 7, 3, 10], 1.0);
    let xv = var(&base);
    let x = xv.as_tensor().transpose(1, 2).unwrap(); // [2, 3, 7, 10], strided
    let y = rope(&x, &cos, &sin, &positions).unwrap();
    assert_eq!(y.dims(), &[2, 3, 7, 10]);
    assert!(
        y.transpose(1, 2).unwrap().is_contiguous(),
        "output keeps the input's memory order"
    );
    let y_ref = reference::rope(&x, &cos, &sin, &positions).unwrap();
    assert_close("rope forward", &y, &y_ref, F32_TOL);
    let g = weighted_sum(&y, 1).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, 1).unwrap().backward().unwrap();
    assert_close("rope dx", &grad(&g, &xv), &grad(&g_ref, &xv), F32_TOL);
    let loss =
        |xs: &[Tensor]| weighted_sum(&rope(&xs[0].transpose(1, 2)?, &cos, &sin, &positions)?, 1);
    check_finite_difference("rope dx", &[base], 0, &grad(&g, &xv), loss);
}

#[test]
fn shared_positions_and_bf16() {
    let (cos, sin) = tables(4, 32);
    let positions = Tensor::new(&[3u32, 4, 5, 6, 7], &cpu()).unwrap();
    let x = bf16(&rand(22, &[2, 2, 5, 8], 2.0));
    let xv = var(&x);
    let y = rope(xv.as_tensor(), &cos, &sin, &positions).unwrap();
    let xf = var(&widened(&x));
    let y_ref = reference::rope(xf.as_tensor(), &cos, &sin, &positions).unwrap();
    assert_close("bf16 rope", &y, &y_ref, BF16_TOL);
    let g = weighted_sum(&y, 2).unwrap().backward().unwrap();
    let g_ref = weighted_sum(&y_ref, 2).unwrap().backward().unwrap();
    assert_close("bf16 rope dx", &grad(&g, &xv), &grad(&g_ref, &xf), BF16_TOL);
}

#[test]
fn bad_positions_are_named() {
    let (cos, sin) = tables(2, 4);
    let x = rand(23, &[1, 1, 2, 4], 1.0);
    let err = rope(&x, &cos, &sin, &Tensor::new(&[1u32, 4], &cpu()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("position 4"), "{err}");
    let err = rope(&x, &cos, &sin, &Tensor::new(&[1u32, 2, 3], &cpu()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`positions`"), "{err}");
    let odd = rand(23, &[1, 1, 2, 5], 1.0);
    assert!(rope(&odd, &cos, &sin, &Tensor::new(&[0u32, 1], &cpu()).unwrap()).is_err());
}
