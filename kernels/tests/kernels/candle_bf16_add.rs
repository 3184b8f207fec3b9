//! The vendored candle's whole-vector bf16 add (scripts/vendor/candle.py, patch 4) against
//! `half`'s scalar add, which is what candle computed before: every bf16 gradient sum of a
//! bf16 training step goes through it.

use candle_core::{Device, Tensor};
use half::bf16;

/// Every bf16 bit pattern (NaNs, infinities, zeros of both signs, ties at every exponent)
/// against a scrambled copy, in a length that leaves a tail for each vector width.
#[test]
fn bf16_add_gives_the_scalar_sums_bits() {
    let a: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    // A fixed odd multiplier permutes the patterns, so each meets a different partner.
    let b: Vec<bf16> = (0..=u16::MAX as u32)
        .map(|i| bf16::from_bits((i.wrapping_mul(40_503) ^ 0x5a5a) as u16))
        .collect();
    let n = a.len() - 5;
    let dev = Device::Cpu;
    let sum = (Tensor::from_slice(&a[..n], n, &dev).unwrap()
        + Tensor::from_slice(&b[..n], n, &dev).unwrap())
    .unwrap()
    .to_vec1::<bf16>()
    .unwrap();
    let mut checked = 0;
    for i in 0..n {
        let want = a[i] + b[i];
        let exact = a[i].to_f32() + b[i].to_f32();
        // AVX-512 BF16's rounding instruction flushes subnormal results to zero (candle's
        // path on such CPUs before the patch too): those sums are not compared.
        if exact != 0.0 && exact.abs() < f32::MIN_POSITIVE {
            continue;
        }
        if want.is_nan() {
            assert!(
                sum[i].is_nan(),
                "{i}: {:?} + {:?} gave {:?}, not NaN",
                a[i],
                b[i],
                sum[i]
            );
            continue;
        }
        assert_eq!(
            sum[i].to_bits(),
            want.to_bits(),
            "{i}: {:?} + {:?} gave {:?}, want {:?}",
            a[i],
            b[i],
            sum[i],
            want
        );
        checked += 1;
    }
    assert!(checked > n / 2, "only {checked} of {n} sums compared");
}
