//! Packing: copy a block of A or B into the panel layout the microkernels stream.
//!
//! A panel of `width` rows stores, for each depth index `p`, the `width` values
//! `src[r][p]` contiguously. When the source rows are contiguous along the depth (a
//! row-major activation, or a linear layer's `[out, in]` weight read as `W^T`), this is a
//! transpose, done here 8 x 8 at a time in AVX2 registers; a scalar loop would spend as
//! long packing a weight as multiplying with it.

use half::bf16;
#[cfg(target_arch = "x86_64")]
use half::f16;

use super::MatRef;
use crate::elem::Elem;
#[cfg(target_arch = "x86_64")]
use crate::elem::Typed;

/// Portable packing into f32 panels (zero past the last row).
#[inline(always)]
pub(super) fn pack_f32<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
    let (rows, depth) = (src.rows, src.cols);
    for (q, r0) in (0..rows).step_by(width).enumerate() {
        let panel = &mut dst[q * depth * width..(q + 1) * depth * width];
        let live = width.min(rows - r0);
        if src.rs == 1 {
            // The panel's rows are contiguous in the source: copy runs of `live`.
            for (p, out) in panel.chunks_exact_mut(width).enumerate() {
                let start = src.offset + r0 + p * src.cs;
                for (d, s) in out[..live].iter_mut().zip(&src.data[start..start + live]) {
                    *d = s.to_f32();
                }
            }
        } else {
            for r in 0..live {
                let start = src.offset + (r0 + r) * src.rs;
                for p in 0..depth {
                    panel[p * width + r] = src.data[start + p * src.cs].to_f32();
                }
            }
        }
        if live < width {
            for out in panel.chunks_exact_mut(width) {
                out[live..].fill(0.0);
            }
        }
    }
}

/// [`pack_f32`] with the depth-contiguous case transposed in AVX2 registers.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn pack_f32_x86<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
    if src.cs != 1 || src.cols < 8 || src.rs == 1 {
        pack_f32(src, width, dst);
        return;
    }
    // SAFETY: AVX2/F16C present (caller); the view was bounds-checked when built.
    unsafe {
        match T::typed(src.data) {
            Typed::F32(d) => transpose_f32(src.with_data(d), width, dst),
            Typed::BF16(d) => transpose_bf16(src.with_data(d), width, dst),
            Typed::F16(d) => transpose_f16(src.with_data(d), width, dst),
        }
    }
}

/// Transposes the 8 x 8 block held in `r` (row i in `r[i]`): `out[j]` holds column j.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// A lane mask enabling the first `n` (< 8) lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn first_lanes(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
}

/// Generates the depth-contiguous transposing packer for one source type; `$load` turns a
/// pointer to 8 consecutive source values into 8 f32 lanes.
macro_rules! transposer {
    ($name:ident, $t:ty, $load:ident) => {
        /// # Safety
        /// AVX2 + F16C present; `src.cs == 1`; `dst` holds the panels.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn $name(src: MatRef<'_, $t>, width: usize, dst: &mut [f32]) {
            use std::arch::x86_64::*;
            let (rows, depth) = (src.rows, src.cols);
            let full = depth / 8 * 8;
            let base = src.data.as_ptr();
            for (q, r0) in (0..rows).step_by(width).enumerate() {
                let panel = &mut dst[q * depth * width..(q + 1) * depth * width];
                let live = width.min(rows - r0);
                let out = panel.as_mut_ptr();
                // Depth outside, rows inside: each step writes 8 whole panel rows (`width`
                // values, contiguous). With rows outside, each panel row was written in
                // `width / 8` 32-byte pieces a whole pass over the panel apart (the panel
                // is larger than L1): the transpose took ~10% longer (f32 weights of the
                // training bench's shapes, share of a product's samples 2.4% -> 2.2%).
                for p0 in (0..full).step_by(8) {
                    for g in (0..width).step_by(8) {
                        let lanes = 8.min(width - g);
                        let mask = first_lanes(lanes);
                        let mut block = [_mm256_setzero_ps(); 8];
                        for (i, v) in block.iter_mut().enumerate() {
                            if g + i < live {
                                // SAFETY: row r0+g+i < rows and columns p0..p0+8 <= depth lie
                                // inside the view, which was bounds-checked when built.
                                *v = unsafe {
                                    $load(base.add(src.offset + (r0 + g + i) * src.rs + p0))
                                };
                            }
                        }
                        let cols = transpose8(block);
                        for (j, col) in cols.iter().enumerate() {
                            // SAFETY: (p0 + j) * width + g + lanes <= depth * width: inside
                            // this panel.
                            unsafe {
                                let at = out.add((p0 + j) * width + g);
                                if lanes == 8 {
                                    _mm256_storeu_ps(at, *col);
                                } else {
                                    _mm256_maskstore_ps(at, mask, *col);
                                }
                            }
                        }
                    }
                }
                // The last depth % 8 columns, and zero rows past the end.
                for r in 0..width {
                    for p in full..depth {
                        panel[p * width + r] = if r < live {
                            src.data[src.offset + (r0 + r) * src.rs + p].to_f32()
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    };
}

/// Eight f32 from `p`.
///
/// # Safety
/// AVX present; 8 values readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8_f32(p: *const f32) -> std::arch::x86_64::__m256 {
    // SAFETY: function contract.
    unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
}

/// Eight bf16 from `p`, widened (a bf16 is the top half of an f32).
///
/// # Safety
/// AVX2 present; 8 values readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8_bf16(p: *const bf16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: function contract.
    unsafe {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// Eight f16 from `p`, widened.
///
/// # Safety
/// F16C present; 8 values readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn load8_f16(p: *const f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: function contract.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

transposer!(transpose_f32, f32, load8_f32);
transposer!(transpose_bf16, bf16, load8_bf16);
transposer!(transpose_f16, f16, load8_f16);

/// Packs like [`pack_f32`] but as bf16 pairs along the depth, the operand layout of
/// `vdpbf16ps`: panel `q`, pair `p/2`, row `r` holds `(src[r][p], src[r][p+1])`; an odd
/// depth is padded with a zero.
// The bf16 kernel that reads these panels is x86's; elsewhere only the tests call it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
pub(super) fn pack_bf16_pairs(src: MatRef<'_, bf16>, width: usize, dst: &mut [bf16]) {
    let (rows, depth) = (src.rows, src.cols);
    let depth_p = depth.next_multiple_of(2);
    #[cfg(target_arch = "x86_64")]
    if src.cs == 1
        && src.rs != 1
        && depth >= 16
        && crate::cpu::isa::detected() >= crate::cpu::isa::Isa::Avx2
    {
        // SAFETY: AVX2 checked above; cs == 1.
        unsafe { transpose_bf16_pairs(src, width, dst) };
        return;
    }
    if src.rs == 1 && src.cs != 1 {
        interleave_bf16_pairs(src, width, dst);
        return;
    }
    for (q, r0) in (0..rows).step_by(width).enumerate() {
        let panel = &mut dst[q * depth_p * width..(q + 1) * depth_p * width];
        let live = width.min(rows - r0);
        for r in 0..width {
            for p in 0..depth_p {
                panel[(p / 2) * width * 2 + r * 2 + (p % 2)] = if r < live && p < depth {
                    src.data[src.offset + (r0 + r) * src.rs + p * src.cs]
                } else {
                    bf16::ZERO
                };
            }
        }
    }
}

/// [`pack_bf16_pairs`] when a panel's rows are adjacent in memory (`rs == 1`: B of a
/// row-major `k x n` matrix, or A = X^T of a row-major X, as attention's tile products
/// read P^T, dS^T, V, K, Q and dO). Each pair then interleaves two source lines, depth `p`
/// and `p + 1`, which the compiler vectorises; the element-by-element gather it replaces
/// cost as much as a small product's arithmetic.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn interleave_bf16_pairs(src: MatRef<'_, bf16>, width: usize, dst: &mut [bf16]) {
    let (rows, depth) = (src.rows, src.cols);
    let depth_p = depth.next_multiple_of(2);
    let line = |p: usize, r0: usize, live: usize| -> &[bf16] {
        if p < depth {
            &src.data[src.offset + p * src.cs + r0..][..live]
        } else {
            &[]
        }
    };
    for (q, r0) in (0..rows).step_by(width).enumerate() {
        let panel = &mut dst[q * depth_p * width..(q + 1) * depth_p * width];
        let live = width.min(rows - r0);
        for (k, out) in panel.chunks_exact_mut(2 * width).enumerate() {
            let (even, odd) = (line(2 * k, r0, live), line(2 * k + 1, r0, live));
            let (head, tail) = out.split_at_mut(2 * live);
            if odd.is_empty() {
                for (pair, &e) in head.chunks_exact_mut(2).zip(even) {
                    pair[0] = e;
                    pair[1] = bf16::ZERO;
                }
            } else {
                for ((pair, &e), &o) in head.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = e;
                    pair[1] = o;
                }
            }
            tail.fill(bf16::ZERO);
        }
    }
}

/// [`pack_bf16_pairs`] for depth-contiguous rows: each pair is one u32, so this is an
/// 8 x 8 transpose of u32s.
///
/// # Safety
/// AVX2 present; `src.cs == 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_bf16_pairs(src: MatRef<'_, bf16>, width: usize, dst: &mut [bf16]) {
    use std::arch::x86_64::*;
    let (rows, depth) = (src.rows, src.cols);
    let depth_p = depth.next_multiple_of(2);
    let pairs_full = depth / 16 * 8; // pairs in whole 8-pair (16-value) blocks
    let base = src.data.as_ptr();
    for (q, r0) in (0..rows).step_by(width).enumerate() {
        let panel = &mut dst[q * depth_p * width..(q + 1) * depth_p * width];
        let live = width.min(rows - r0);
        let out = panel.as_mut_ptr() as *mut f32; // one f32 lane = one bf16 pair
        for g in (0..width).step_by(8) {
            let lanes = 8.min(width - g);
            let mask = first_lanes(lanes);
            for k0 in (0..pairs_full).step_by(8) {
                let mut block = [_mm256_setzero_ps(); 8];
                for (i, v) in block.iter_mut().enumerate() {
                    if g + i < live {
                        // SAFETY: 16 values from column 2*k0 of row r0+g+i lie inside the
                        // bounds-checked view (2*k0 + 16 <= depth).
                        *v = unsafe {
                            _mm256_loadu_ps(
                                base.add(src.offset + (r0 + g + i) * src.rs + 2 * k0) as *const f32
                            )
                        };
                    }
                }
                let cols = transpose8(block);
                for (j, col) in cols.iter().enumerate() {
                    // SAFETY: pair (k0 + j) of rows g..g+lanes is inside this panel.
                    unsafe {
                        let at = out.add((k0 + j) * width + g);
                        if lanes == 8 {
                            _mm256_storeu_ps(at, *col);
                        } else {
                            _mm256_maskstore_ps(at, mask, *col);
                        }
                    }
                }
            }
        }
        for r in 0..width {
            for p in 2 * pairs_full..depth_p {
                panel[(p / 2) * width * 2 + r * 2 + (p % 2)] = if r < live && p < depth {
                    src.data[src.offset + (r0 + r) * src.rs + p]
                } else {
                    half::bf16::ZERO
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use half::f16;

    fn source(rows: usize, depth: usize) -> Vec<f32> {
        (0..rows * depth).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposing_packers_match_the_portable_one() {
        if crate::cpu::isa::detected() < crate::cpu::isa::Isa::Avx2 {
            return;
        }
        // Widths of every kernel (6, 12, 16, 32), depths with and without a tail, rows not
        // a multiple of the width, and a row stride wider than the depth.
        for width in [4, 6, 8, 12, 16, 32] {
            for (rows, depth, rs) in [(13, 8, 8), (37, 29, 40), (5, 64, 70)] {
                let data = source(rows, rs);
                let f16s: Vec<f16> = data.iter().map(|v| f16::from_f32(*v)).collect();
                let bf16s: Vec<bf16> = data.iter().map(|v| bf16::from_f32(*v)).collect();
                let len = rows.div_ceil(width) * width * depth;
                let (mut want, mut got) = (vec![0f32; len], vec![1f32; len]);
                let view = MatRef::new(&data, 0, rows, depth, rs, 1);
                pack_f32(view, width, &mut want);
                // SAFETY: AVX2 checked above.
                unsafe { pack_f32_x86(view, width, &mut got) };
                assert_eq!(got, want, "f32 width {width} rows {rows} depth {depth}");
                let view = MatRef::new(&bf16s, 0, rows, depth, rs, 1);
                pack_f32(view, width, &mut want);
                // SAFETY: AVX2 checked above.
                unsafe { pack_f32_x86(view, width, &mut got) };
                assert_eq!(got, want, "bf16 width {width}");
                let view = MatRef::new(&f16s, 0, rows, depth, rs, 1);
                pack_f32(view, width, &mut want);
                // SAFETY: AVX2 checked above.
                unsafe { pack_f32_x86(view, width, &mut got) };
                assert_eq!(got, want, "f16 width {width}");
            }
        }
    }

    #[test]
    fn bf16_pair_packer_lays_out_pairs_along_the_depth() {
        // Depth-contiguous rows (the transposing packer), rows adjacent in memory (the
        // interleaving packer: `stride` is then the depth stride) and both, with odd depths
        // and rows not a multiple of the width.
        for width in [12, 32] {
            for (rows, depth, stride) in [(13usize, 16usize, 16usize), (37, 35, 40), (5, 64, 64)] {
                for rows_adjacent in [false, true] {
                    let (rs, cs) = if rows_adjacent {
                        (1, stride.max(rows))
                    } else {
                        (stride, 1)
                    };
                    let len = (rows - 1) * rs + (depth - 1) * cs + 1;
                    let data: Vec<bf16> = source(len, 1).into_iter().map(bf16::from_f32).collect();
                    let depth_p = depth.next_multiple_of(2);
                    let mut got = vec![bf16::ONE; rows.div_ceil(width) * width * depth_p];
                    pack_bf16_pairs(MatRef::new(&data, 0, rows, depth, rs, cs), width, &mut got);
                    for q in 0..rows.div_ceil(width) {
                        for p in 0..depth_p {
                            for r in 0..width {
                                let row = q * width + r;
                                let want = if row < rows && p < depth {
                                    data[row * rs + p * cs]
                                } else {
                                    bf16::ZERO
                                };
                                let at = q * depth_p * width + (p / 2) * width * 2 + r * 2 + p % 2;
                                assert_eq!(
                                    got[at], want,
                                    "width {width} row {row} depth {p} rows adjacent {rows_adjacent}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
