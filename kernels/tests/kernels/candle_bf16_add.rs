//! The vendored candle's whole-vector bf16 add and multiply (scripts/vendor/candle.py,
//! patches 4 and 5) against `half`'s scalar ones, which is what candle computed before on
//! x86: every bf16 gradient sum of a bf16 training step goes through the add. On ARM the
//! NEON paths truncated to bf16 until patch 5; these fail there without it.

use candle_core::{Device, Tensor};
use half::bf16;

/// Every bf16 bit pattern (NaNs, infinities, zeros of both signs, ties at every exponent)
/// against a scrambled copy, in a length that leaves a tail for each vector width.
fn operands() -> (Vec<bf16>, Vec<bf16>) {
    let a: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    // A fixed odd multiplier permutes the patterns, so each meets a different partner.
    let b: Vec<bf16> = (0..=u16::MAX as u32)
        .map(|i| bf16::from_bits((i.wrapping_mul(40_503) ^ 0x5a5a) as u16))
        .collect();
    let n = a.len() - 5;
    (a[..n].to_vec(), b[..n].to_vec())
}

#[test]
fn bf16_add_gives_the_scalar_sums_bits() {
    assert_scalar_bits("+", |x, y| x + y, |x, y| x + y, |x, y| x + y);
}

#[test]
fn bf16_mul_gives_the_scalar_products_bits() {
    assert_scalar_bits("*", |x, y| x * y, |x, y| x * y, |x, y| x * y);
}

/// candle's `tensor_op` over [`operands`] gives, element by element, the bits of `half`'s
/// `op` (any NaN for a NaN), except where the exact f32 result (`op_f32`) is subnormal (see
/// below); most results must be compared.
fn assert_scalar_bits(
    name: &str,
    tensor_op: impl Fn(Tensor, Tensor) -> candle_core::Result<Tensor>,
    op: impl Fn(bf16, bf16) -> bf16,
    op_f32: impl Fn(f32, f32) -> f32,
) {
    let (a, b) = operands();
    let dev = Device::Cpu;
    let got = tensor_op(
        Tensor::from_slice(&a, a.len(), &dev).unwrap(),
        Tensor::from_slice(&b, b.len(), &dev).unwrap(),
    )
    .unwrap()
    .to_vec1::<bf16>()
    .unwrap();
    let n = a.len();
    let mut checked = 0;
    for i in 0..n {
        let want = op(a[i], b[i]);
        let exact = op_f32(a[i].to_f32(), b[i].to_f32());
        // AVX-512 BF16's rounding instruction flushes subnormal results to zero (candle's
        // path on such CPUs before the patch too): those results are not compared.
        if exact != 0.0 && exact.abs() < f32::MIN_POSITIVE {
            continue;
        }
        if want.is_nan() {
            assert!(
                got[i].is_nan(),
                "{i}: {:?} {name} {:?} gave {:?}, not NaN",
                a[i],
                b[i],
                got[i]
            );
            continue;
        }
        assert_eq!(
            got[i].to_bits(),
            want.to_bits(),
            "{i}: {:?} {name} {:?} gave {:?}, want {:?}",
            a[i],
            b[i],
            got[i],
            want
        );
        checked += 1;
    }
    assert!(checked > n / 2, "only {checked} of {n} results compared");
}
