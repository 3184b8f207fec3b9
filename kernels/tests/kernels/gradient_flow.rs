//! Gradients must reach every trainable parameter through every kernel of a composed
//! block (candle's fused ops silently stop them), and agree with the same block written in
//! plain candle ops.

use candle_core::{DType, Tensor};
use kubeswift_kernels::{AttnMask, linear_cross_entropy, reference};

use crate::common::*;

#[path = "../../benches/layer/model.rs"]
mod model;

#[test]
fn every_parameter_of_a_lora_layer_gets_the_reference_gradient() {
    let cfg = model::Config::tiny();
    let layer = model::Layer::new(cfg, DType::F32, &cpu(), 1, true).unwrap();
    assert_eq!(
        layer.vars.len(),
        7 * 2 + 2,
        "LoRA A/B of 7 linears and 2 norms"
    );
    let (b, t, vocab) = (2, 11, 50);
    let x = var(&rand(77, &[b, t, cfg.hidden], 1.0));
    let lm_head = var(&rand(78, &[vocab, cfg.hidden], 0.3));
    let positions = Tensor::from_vec(
        (0..b * t).map(|i| (i % t) as u32).collect::<Vec<_>>(),
        (b, t),
        &cpu(),
    )
    .unwrap();
    let labels: Vec<i64> = (0..b * t)
        .map(|i| {
            if i % 4 == 1 {
                -100
            } else {
                (i * 7 % vocab) as i64
            }
        })
        .collect();
    let count = labels.iter().filter(|&&l| l != -100).count();
    let labels = Tensor::new(labels.as_slice(), &cpu()).unwrap();

    let out = layer
        .forward_kernels(x.as_tensor(), &positions, &AttnMask::causal())
        .unwrap();
    let ce = linear_cross_entropy(
        &out.reshape((b * t, cfg.hidden)).unwrap(),
        lm_head.as_tensor(),
        &labels,
        Default::default(),
    )
    .unwrap();
    assert_eq!(ce.count, count);
    let loss = ce.mean().unwrap();

    let out_ref = layer.forward_plain(x.as_tensor(), &positions).unwrap();
    let loss_ref = (reference::linear_cross_entropy_sum(
        &out_ref.reshape((b * t, cfg.hidden)).unwrap(),
        lm_head.as_tensor(),
        &labels,
        -100,
    )
    .unwrap()
        / count as f64)
        .unwrap();
    assert_close("layer loss", &loss, &loss_ref, F32_TOL);

    let g = loss.backward().unwrap();
    let g_ref = loss_ref.backward().unwrap();
    let mut all = layer.vars.clone();
    all.push(("input".into(), x));
    all.push(("lm_head".into(), lm_head));
    for (name, v) in &all {
        let got = grad(&g, v);
        let largest = got
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(largest > 0.0, "{name}: zero gradient");
        assert_close(name, &got, &grad(&g_ref, v), 1e-4);
    }
}
