//! The floating-point element types the kernels read and write.

use half::{bf16, f16};

use crate::cpu::convert;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A slice of one of the element types, for code that specialises on the type.
#[derive(Clone, Copy)]
pub enum Typed<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

/// A storage type the kernels accept: f32, bf16 or f16. Arithmetic is always done in f32.
pub trait Elem: candle_core::WithDType + sealed::Sealed + Copy + Send + Sync + 'static {
    /// Widens one value to f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (nearest, ties to even).
    fn from_f32(v: f32) -> Self;
    /// Widens a slice (same lengths).
    fn load(src: &[Self], dst: &mut [f32]);
    /// Rounds a slice (same lengths).
    fn store(src: &[f32], dst: &mut [Self]);
    /// Rounds a vector of f32 to this type, in parallel (no copy for f32).
    fn from_f32_vec(values: Vec<f32>) -> Vec<Self> {
        Self::from_f32_slice(&values)
    }
    /// Rounds a slice of f32 to a new vector of this type, in parallel. The vector is not
    /// zero-filled first: that was a serial memset about as long as the parallel rounding,
    /// with the other threads idle.
    fn from_f32_slice(values: &[f32]) -> Vec<Self> {
        const CHUNK: usize = 1 << 16;
        let n = values.len();
        let mut out = Vec::with_capacity(n);
        crate::cpu::par::for_each_chunk_mut(
            &mut out.spare_capacity_mut()[..n],
            CHUNK,
            |i, chunk| {
                let start = i * CHUNK;
                Self::store_uninit(&values[start..start + chunk.len()], chunk);
            },
        );
        // SAFETY: the chunks cover 0..n and `store_uninit` wrote every element of each.
        unsafe { out.set_len(n) };
        out
    }
    /// `src` as f32: the slice itself for f32, otherwise widened into `buf` (at least
    /// `src.len()` long). Kernels that read their inputs through this skip a copy per
    /// element in f32 (~0.8% of an f32 LoRA step's samples went to such copies).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        match Self::typed(src) {
            Typed::F32(s) => s,
            _ => {
                let buf = &mut buf[..src.len()];
                Self::load(src, buf);
                buf
            }
        }
    }
    /// [`Elem::store`] into memory not yet initialised (written through a small buffer
    /// that stays in L1).
    fn store_uninit(src: &[f32], dst: &mut [std::mem::MaybeUninit<Self>]) {
        let mut buf = [Self::from_f32(0.0); 512];
        for (s, d) in src.chunks(512).zip(dst.chunks_mut(512)) {
            let b = &mut buf[..s.len()];
            Self::store(s, b);
            for (d, v) in d.iter_mut().zip(b.iter()) {
                d.write(*v);
            }
        }
    }
    /// The slice with its concrete type (for SIMD loads and the native bf16 GEMM).
    fn typed(src: &[Self]) -> Typed<'_>;
    /// The slice as bf16 if this is bf16.
    fn as_bf16(src: &[Self]) -> Option<&[bf16]> {
        match Self::typed(src) {
            Typed::BF16(s) => Some(s),
            _ => None,
        }
    }
}

impl Elem for f32 {
    fn from_f32_vec(values: Vec<f32>) -> Vec<Self> {
        values
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    /// A plain copy, without the default's trip through a buffer.
    fn store_uninit(src: &[f32], dst: &mut [std::mem::MaybeUninit<Self>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
    }
    fn typed(src: &[Self]) -> Typed<'_> {
        Typed::F32(src)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        convert::bf16_bits_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_bits(convert::f32_to_bf16_bits(v))
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        convert::bf16_to_f32(src, dst);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        convert::f32_to_bf16(src, dst);
    }
    /// Straight into `dst`: the default's trip through an L1 buffer was a copy of every
    /// rounded bf16 result (~0.5% of a bf16 LoRA step).
    fn store_uninit(src: &[f32], dst: &mut [std::mem::MaybeUninit<Self>]) {
        convert::f32_to_bf16_uninit(src, dst);
    }
    fn typed(src: &[Self]) -> Typed<'_> {
        Typed::BF16(src)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn load(src: &[Self], dst: &mut [f32]) {
        convert::f16_to_f32(src, dst);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        convert::f32_to_f16(src, dst);
    }
    fn typed(src: &[Self]) -> Typed<'_> {
        Typed::F16(src)
    }
}
