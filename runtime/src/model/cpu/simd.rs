//! The few vector loops the CPU inference kernels are made of, with an AVX2+FMA version
//! chosen at run time and a portable fallback that computes the same thing.
//!
//! Weights may be f32, bf16 or f16; they are widened to f32 in registers, so a bf16 model
//! streams half the bytes of an f32 one (decode is memory-bound) and accumulates in f32.

use half::{bf16, f16};

/// A weight element type the kernels can read.
pub trait WeightElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// `acc[r][c] += dot(x[r], w[c])` for `M` rows of `x` and `R` rows of `w`, AVX2 when
    /// the CPU has it. `x` rows are `k` apart, `w` rows `k` apart.
    fn dot_block<const R: usize, const M: usize>(x: &[f32], w: &[Self], k: usize) -> [[f32; R]; M];
}

macro_rules! weight_elem {
    ($t:ty, $to_f32:expr, $avx:ident) => {
        impl WeightElem for $t {
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $to_f32(self)
            }
            #[inline]
            fn dot_block<const R: usize, const M: usize>(
                x: &[f32],
                w: &[Self],
                k: usize,
            ) -> [[f32; R]; M] {
                assert!(x.len() >= M * k && w.len() >= R * k);
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: the CPU supports AVX2/FMA/F16C (checked above) and the slices
                    // hold M and R rows of k elements (asserted above).
                    return unsafe { avx2::$avx::<R, M>(x.as_ptr(), w.as_ptr(), k) };
                }
                portable_dot_block::<Self, R, M>(x, w, k)
            }
        }
    };
}

weight_elem!(f32, |v: f32| v, dot_block_f32);
weight_elem!(bf16, |v: bf16| v.to_f32(), dot_block_bf16);
weight_elem!(f16, |v: f16| v.to_f32(), dot_block_f16);

fn portable_dot_block<T: WeightElem, const R: usize, const M: usize>(
    x: &[f32],
    w: &[T],
    k: usize,
) -> [[f32; R]; M] {
    let mut out = [[0f32; R]; M];
    for (m, row) in out.iter_mut().enumerate() {
        let xr = &x[m * k..(m + 1) * k];
        for (r, acc) in row.iter_mut().enumerate() {
            let wr = &w[r * k..(r + 1) * k];
            *acc = xr.iter().zip(wr).map(|(a, b)| a * b.to_f32()).sum();
        }
    }
    out
}

/// `dot(a, b)` over f32.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    f32::dot_block::<1, 1>(&a[..n], &b[..n], n)[0][0]
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && x.len() == y.len() {
        // SAFETY: AVX2/FMA present; equal lengths checked.
        unsafe { avx2::axpy(alpha, x.as_ptr(), y.as_mut_ptr(), x.len()) };
        return;
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// True when AVX2, FMA and F16C are available (cached by std).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        unsafe {
            let v = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
        }
    }

    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    macro_rules! dot_block {
        ($name:ident, $t:ty, $load:ident) => {
            /// R weight rows against M input rows, 8 lanes at a time, f32 accumulators.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name<const R: usize, const M: usize>(
                x: *const f32,
                w: *const $t,
                k: usize,
            ) -> [[f32; R]; M] {
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); R]; M];
                    let mut i = 0;
                    while i + 8 <= k {
                        let mut wv = [_mm256_setzero_ps(); R];
                        for r in 0..R {
                            wv[r] = $load(w.add(r * k + i));
                        }
                        for m in 0..M {
                            let xv = _mm256_loadu_ps(x.add(m * k + i));
                            for r in 0..R {
                                acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
                            }
                        }
                        i += 8;
                    }
                    let mut out = [[0f32; R]; M];
                    for m in 0..M {
                        for r in 0..R {
                            let mut s = hsum(acc[m][r]);
                            for j in i..k {
                                s += *x.add(m * k + j)
                                    * super::WeightElem::to_f32(*w.add(r * k + j));
                            }
                            out[m][r] = s;
                        }
                    }
                    out
                }
            }
        };
    }

    dot_block!(dot_block_f32, f32, load_f32);
    dot_block!(dot_block_bf16, bf16, load_bf16);
    dot_block!(dot_block_f16, f16, load_f16);

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(alpha: f32, x: *const f32, y: *mut f32, n: usize) {
        unsafe {
            let a = _mm256_set1_ps(alpha);
            let mut i = 0;
            while i + 8 <= n {
                let yv = _mm256_fmadd_ps(a, load_f32(x.add(i)), _mm256_loadu_ps(y.add(i)));
                _mm256_storeu_ps(y.add(i), yv);
                i += 8;
            }
            for j in i..n {
                *y.add(j) += alpha * *x.add(j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    #[test]
    fn dot_block_matches_portable_for_every_dtype_and_tail() {
        for k in [1, 7, 8, 13, 64, 67] {
            let x = data(3 * k, 1);
            let w = data(2 * k, 2);
            let fast = f32::dot_block::<2, 3>(&x, &w, k);
            let slow = portable_dot_block::<f32, 2, 3>(&x, &w, k);
            for m in 0..3 {
                for r in 0..2 {
                    assert!((fast[m][r] - slow[m][r]).abs() < 1e-4, "k={k}");
                }
            }
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let fb = bf16::dot_block::<2, 3>(&x, &wb, k);
            let sb = portable_dot_block::<bf16, 2, 3>(&x, &wb, k);
            let fh = f16::dot_block::<2, 3>(&x, &wh, k);
            let sh = portable_dot_block::<f16, 2, 3>(&x, &wh, k);
            for m in 0..3 {
                for r in 0..2 {
                    assert!((fb[m][r] - sb[m][r]).abs() < 1e-4, "bf16 k={k}");
                    assert!((fh[m][r] - sh[m][r]).abs() < 1e-4, "f16 k={k}");
                }
            }
        }
    }

    #[test]
    fn axpy_adds_scaled() {
        let x = data(19, 3);
        let mut y = data(19, 4);
        let expect: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a + 0.5 * b).collect();
        axpy(0.5, &x, &mut y);
        for (a, b) in y.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
