//! Vectorised conversions between 16-bit floats and f32.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::cpu::multiversion::multiversion;

/// Rounds an f32 to the nearest bf16 (ties to even), keeping NaN a quiet NaN; the same
/// result as `half::bf16::from_f32`, written so it vectorises.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((bits >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// bf16 bits to f32 (exact).
#[inline(always)]
pub(crate) fn bf16_bits_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

multiversion! {
    /// `dst[i] = src[i] as f32`; the slices must have the same length.
    pub(crate) fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_bits_to_f32(s.to_bits());
        }
    }
}

multiversion! {
    /// `dst[i] = bf16(src[i])`, rounding to nearest even.
    pub(crate) fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_bits(f32_to_bf16_bits(*s));
        }
    }
}

multiversion! {
    /// [`f32_to_bf16`] into memory not yet initialised.
    pub(crate) fn f32_to_bf16_uninit(src: &[f32], dst: &mut [std::mem::MaybeUninit<bf16>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(bf16::from_bits(f32_to_bf16_bits(*s)));
        }
    }
}

/// `dst[i] = src[i] as f32` (half's converter detects F16C at run time itself).
pub(crate) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    src.convert_to_f32_slice(dst);
}

/// `dst[i] = f16(src[i])`.
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    dst.convert_from_f32_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let values = [
            0.0f32,
            -0.0,
            1.0,
            1.003_906_3, // exactly halfway between two bf16 values: ties to even
            1.011_718_8,
            std::f32::consts::PI,
            -std::f32::consts::E,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            1.000_000_1,
        ];
        let mut ours = vec![bf16::ZERO; values.len()];
        f32_to_bf16(&values, &mut ours);
        for (v, o) in values.iter().zip(&ours) {
            assert_eq!(o.to_bits(), bf16::from_f32(*v).to_bits(), "value {v}");
        }
        let mut uninit = vec![std::mem::MaybeUninit::<bf16>::uninit(); values.len()];
        f32_to_bf16_uninit(&values, &mut uninit);
        for (u, o) in uninit.iter().zip(&ours) {
            // SAFETY: f32_to_bf16_uninit wrote every element.
            assert_eq!(unsafe { u.assume_init() }.to_bits(), o.to_bits());
        }
        let mut nan = [bf16::ZERO];
        f32_to_bf16(&[f32::NAN], &mut nan);
        assert!(nan[0].is_nan());
        let mut back = vec![0f32; ours.len()];
        bf16_to_f32(&ours, &mut back);
        for (b, o) in back.iter().zip(&ours) {
            assert_eq!(b.to_bits(), o.to_f32().to_bits());
        }
    }
}
