//! Branch-free scalar math that vectorises inside `multiversion!` loops.
//!
//! `f32::exp` is a libm call per element; attention, softmax and SiLU need hundreds of
//! millions of them per step, so they use this polynomial instead (max error ~2 ulp).

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln(2) split in a part exact in f32 and a remainder (Cody-Waite), as in Cephes `expf`.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 * 2^23: adding it rounds to the nearest integer and leaves that integer in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x; 0 below -87.3 (including -inf), +inf above 88.7, NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let n_bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n_bits + 127) as u32) << 23);
    let v = y * scale;
    let v = if x < -87.3 { 0.0 } else { v };
    let v = if x > 88.7 { f32::INFINITY } else { v };
    if x.is_nan() { x } else { v }
}

/// [`exp`] on sixteen lanes: the same reduction and polynomial with fused multiply-adds and
/// `vscalefps` for the power of two (so within an ulp or two of [`exp`], not bit for bit),
/// and the same edges (0 below -87.3 and for -inf, +inf above 88.7, NaN stays NaN).
///
/// For loops whose rows are too short for the compiler's vectorisation of [`exp`] to pay
/// for its per-row set-up (attention's 64-key score rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let set1 = _mm512_set1_ps;
    // max/min return their second operand for a NaN lane; the NaN is put back at the end.
    let xc = _mm512_min_ps(_mm512_max_ps(x, set1(-87.3)), set1(88.3));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(xc, set1(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, set1(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, set1(LN2_LO), r);
    let mut p = set1(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, set1(c));
    }
    let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, set1(1.0)));
    let v = _mm512_scalef_ps(y, n);
    let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, set1(-87.3));
    let v = _mm512_mask_blend_ps(below, v, _mm512_setzero_ps());
    let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, set1(88.7));
    let v = _mm512_mask_blend_ps(above, v, set1(f32::INFINITY));
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), v, x)
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_avx512_matches_the_scalar_exp() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512 F on this CPU");
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..20_000).map(|i| -95.0 + i as f32 * 0.0093).collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -87.3,
            -87.29,
            88.3,
            88.69,
            88.71,
            0.0,
            -0.0,
            1e-30,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 0.0);
        for chunk in xs.chunks_exact(16) {
            let mut out = [0f32; 16];
            // SAFETY: AVX-512 F checked above; both pointers hold 16 floats.
            unsafe {
                _mm512_storeu_ps(
                    out.as_mut_ptr(),
                    exp_avx512(_mm512_loadu_ps(chunk.as_ptr())),
                )
            };
            for (&x, &v) in chunk.iter().zip(&out) {
                let want = exp(x);
                if want.is_nan() {
                    assert!(v.is_nan(), "exp({x}) = {v}, want NaN");
                } else if want == 0.0 || want.is_infinite() {
                    assert_eq!(v, want, "exp({x})");
                } else {
                    let rel = (v - want).abs() / want;
                    assert!(rel < 3e-7, "exp({x}) = {v}, scalar {want}, relative {rel}");
                }
            }
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
    }
}
