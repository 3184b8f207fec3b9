use candle_core::DType;
use kubeswift_kernels::{grad_seed, silu_mul};

use crate::common::*;

/// `grad_seed(y, g)` backpropagates `g` from `y`: the same gradients as the surrogate
/// `sum(y * g)` through a real op (SiLU-gated product), bit for bit.
#[test]
fn grad_seed_gives_the_surrogates_gradients() {
    let (a, b) = (rand(91, &[3, 5, 16], 1.0), rand(92, &[3, 5, 16], 1.0));
    let g = rand(93, &[3, 5, 16], 1.0);
    let (av, bv) = (var(&a), var(&b));
    let y = silu_mul(av.as_tensor(), bv.as_tensor()).unwrap();
    let seeded = grad_seed(&y, &g).unwrap().backward().unwrap();
    let surrogate = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("a", &av), ("b", &bv)] {
        assert_close(
            &format!("grad_seed d{name}"),
            &grad(&seeded, v),
            &grad(&surrogate, v),
            0.0,
        );
    }
    // Scaled, it scales the gradient (it is an ordinary scalar of the graph).
    let twice = (grad_seed(&y, &g).unwrap() * 2.0)
        .unwrap()
        .backward()
        .unwrap();
    let doubled = (grad(&seeded, &av) * 2.0).unwrap();
    assert_close("grad_seed scaled", &grad(&twice, &av), &doubled, 0.0);
}

#[test]
fn grad_seed_refuses_a_gradient_of_another_shape_or_dtype() {
    let y = rand(94, &[2, 3], 1.0);
    let err = grad_seed(&y, &rand(95, &[3, 2], 1.0)).unwrap_err();
    assert!(err.to_string().contains("grad_seed"), "{err}");
    let bf16 = rand(96, &[2, 3], 1.0).to_dtype(DType::BF16).unwrap();
    assert!(grad_seed(&y, &bf16).is_err());
}
