//! Work done on each tile of C right after its last depth block, while the tile is still in
//! L1, instead of in passes over the whole of C afterwards.
//!
//! A LoRA layer's product is followed by a bias, the adapter's rank-r term and (bf16) the
//! rounding of the f32 result. As passes over C (MBs, in memory) the term and the rounding
//! were ~3.5% of a bf16 LoRA step's samples; as this epilogue ~2.5%, and the product's own
//! share fell too. When the output is rounded and the whole depth fits one block, the f32
//! tile never leaves a stack buffer: C itself is not written at all.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use half::bf16;

use crate::cpu::convert::f32_to_bf16_bits;
use crate::cpu::par::SendPtr;

/// A finished tile handed to the epilogue: at (`row`, `col`) of the whole C, `rows x cols`,
/// held at `c` with row stride `ldc`; an unrounded result goes to `dst` (row stride `ldd`):
/// C's own block, which is `c` itself unless the tile was computed on the stack.
#[derive(Clone, Copy)]
pub(super) struct TileAt {
    pub row: usize,
    pub col: usize,
    pub rows: usize,
    pub cols: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub dst: *mut f32,
    pub ldd: usize,
}

/// `C += scale * lhs P`: `lhs` `[m, r]`, `p` `[r, n]`, both row-major f32 (a LoRA adapter's
/// term: `x A^T` times `B^T`, or `g B` times `A`).
#[derive(Clone, Copy)]
pub struct LowRank<'a> {
    pub lhs: &'a [f32],
    pub p: &'a [f32],
    pub rank: usize,
    pub scale: f32,
}

/// The epilogue of a product `C = alpha A B + beta C` (`m x n`), applied in this order to
/// each finished element: `+ bias[col]`, `+ scale * lhs[row] . p[.., col]` (the FMA chain
/// of `thin::add_lp`, so the sums are bit-identical to the passes it replaces), then rounded
/// to bf16 into `round_to` (row stride `n`) if given, else left in C.
pub struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    low_rank: Option<LowRank<'a>>,
    round_to: Option<SendPtr<bf16>>,
    out_len: usize,
    n: usize,
    _out: PhantomData<&'a mut [MaybeUninit<bf16>]>,
}

impl<'a> Epilogue<'a> {
    /// An epilogue for a product with `n` columns that does nothing yet.
    pub fn new(n: usize) -> Self {
        Epilogue {
            bias: None,
            low_rank: None,
            round_to: None,
            out_len: 0,
            n,
            _out: PhantomData,
        }
    }

    /// Adds `bias` (`n` values) to every row.
    ///
    /// # Panics
    /// If `bias` is not `n` long (a caller bug).
    pub fn bias(mut self, bias: &'a [f32]) -> Self {
        assert_eq!(bias.len(), self.n, "epilogue bias length");
        self.bias = Some(bias);
        self
    }

    /// Adds a low-rank term.
    ///
    /// # Panics
    /// If `p` is not `[rank, n]` (a caller bug).
    pub fn low_rank(mut self, term: LowRank<'a>) -> Self {
        assert_eq!(
            term.p.len(),
            term.rank * self.n,
            "epilogue low-rank p shape"
        );
        self.low_rank = Some(term);
        self
    }

    /// Rounds the result into `out` (`[m, n]`, every element written) instead of leaving it
    /// in C, whose contents are then unspecified.
    pub fn round_into(mut self, out: &'a mut [MaybeUninit<bf16>]) -> Self {
        self.round_to = Some(SendPtr(out.as_mut_ptr().cast()));
        self.out_len = out.len();
        self
    }
}

impl Epilogue<'_> {
    /// Whether there is nothing to do (the product then runs without an epilogue).
    pub fn is_noop(&self) -> bool {
        self.bias.is_none() && self.low_rank.is_none() && self.round_to.is_none()
    }

    /// Whether the result goes to the rounded output rather than C.
    pub(super) fn rounds(&self) -> bool {
        self.round_to.is_some()
    }

    /// # Panics
    /// If the epilogue's operands do not fit an `m x n` product (caller bugs).
    pub(super) fn check(&self, m: usize, n: usize) {
        assert_eq!(
            self.n, n,
            "epilogue built for {} columns, product has {n}",
            self.n
        );
        if let Some(t) = &self.low_rank {
            assert_eq!(
                t.lhs.len(),
                m * t.rank,
                "epilogue low-rank lhs is not [{m}, {}]",
                t.rank
            );
        }
        if self.rounds() {
            assert_eq!(self.out_len, m * n, "epilogue output is not [{m}, {n}]");
        }
    }

    /// Finishes the tile `at` (C's own block, or a stack tile). Portable: a row at a time.
    ///
    /// # Safety
    /// `c` holds the tile's finished sums, and no other thread touches these rows and
    /// columns of C or of the output during the call.
    #[inline(always)]
    pub(super) unsafe fn finish(&self, at: TileAt) {
        let TileAt {
            row: row0,
            col: col0,
            rows,
            cols,
            c,
            ldc,
            dst,
            ldd,
        } = at;
        for i in 0..rows {
            let mut x = 0;
            while x + W <= cols {
                // SAFETY: W columns of row i (function contract).
                unsafe {
                    self.piece::<W>(row0 + i, col0 + x, c.add(i * ldc + x), dst.add(i * ldd + x))
                };
                x += W;
            }
            for x in x..cols {
                // SAFETY: column x of row i.
                unsafe {
                    self.piece::<1>(row0 + i, col0 + x, c.add(i * ldc + x), dst.add(i * ldd + x))
                };
            }
        }
    }

    /// `N` elements of row `row` from column `col`, read at `c`: `+ bias`, `+ scale * lhs .
    /// p` (the FMA chain over the rank in order), then rounded to the output or stored at
    /// `dst`.
    ///
    /// # Safety
    /// As [`Epilogue::finish`], for these elements.
    #[inline(always)]
    unsafe fn piece<const N: usize>(&self, row: usize, col: usize, c: *const f32, dst: *mut f32) {
        // SAFETY: N elements (function contract).
        let mut acc = unsafe { c.cast::<[f32; N]>().read_unaligned() };
        if let Some(bias) = self.bias {
            for (a, b) in acc.iter_mut().zip(&bias[col..col + N]) {
                *a += b;
            }
        }
        if let Some(t) = &self.low_rank {
            for (j, &coef) in t.lhs[row * t.rank..(row + 1) * t.rank].iter().enumerate() {
                let s = t.scale * coef;
                for (a, &p) in acc.iter_mut().zip(&t.p[j * self.n + col..][..N]) {
                    *a = s.mul_add(p, *a);
                }
            }
        }
        match self.round_to {
            // SAFETY: the output holds m x n elements (`check`), and these are ours
            // (function contract).
            Some(out) => unsafe {
                let dst = out.ptr().add(row * self.n + col);
                for (x, &v) in acc.iter().enumerate() {
                    dst.add(x).write(bf16::from_bits(f32_to_bf16_bits(v)));
                }
            },
            // SAFETY: N elements.
            None => unsafe { dst.cast::<[f32; N]>().write_unaligned(acc) },
        }
    }

    /// [`Epilogue::finish`] with AVX-512 registers: four rows by 32 columns at a time, so
    /// the rank-r update runs as eight independent FMA chains (a row at a time waited on
    /// the chains' latency; the compiler did not vectorise a block of rows). The same
    /// operations in the same order per element, so the same bits.
    ///
    /// # Safety
    /// As [`Epilogue::finish`]; the CPU has AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn finish_avx512(&self, at: TileAt) {
        let TileAt {
            row: row0,
            col: col0,
            rows,
            cols,
            c,
            ldc,
            dst,
            ldd,
        } = at;
        let mut x = 0;
        while x < cols {
            let width = (cols - x).min(32);
            let lanes = |w: usize| -> u16 { if w >= 16 { u16::MAX } else { (1u16 << w) - 1 } };
            let masks = [lanes(width), lanes(width.saturating_sub(16))];
            let mut i = 0;
            while i + ROWS <= rows {
                // SAFETY: rows i..i + ROWS, columns x..x + width (function contract).
                unsafe {
                    self.block_avx512::<ROWS>(
                        (row0 + i, col0 + x),
                        masks,
                        (c.add(i * ldc + x), ldc),
                        (dst.add(i * ldd + x), ldd),
                    )
                };
                i += ROWS;
            }
            for i in i..rows {
                // SAFETY: row i, columns x..x + width.
                unsafe {
                    self.block_avx512::<1>(
                        (row0 + i, col0 + x),
                        masks,
                        (c.add(i * ldc + x), ldc),
                        (dst.add(i * ldd + x), ldd),
                    )
                };
            }
            x += width;
        }
    }

    /// `R` rows by up to 32 columns (the lanes `masks` enable, 16 per vector) from (`row0`,
    /// `col`), read at `c` and (unrounded) stored at `dst`, each with its row stride.
    ///
    /// # Safety
    /// As [`Epilogue::finish_avx512`], for these elements.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block_avx512<const R: usize>(
        &self,
        (row0, col): (usize, usize),
        masks: [u16; 2],
        (c, ldc): (*const f32, usize),
        (dst, ldd): (*mut f32, usize),
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the lanes `masks` enable are inside the rows' columns, the bias, p's rows
        // and the output (function contract; masked lanes are neither read nor written);
        // the CPU has AVX-512 F/BW (caller).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for (i, a) in acc.iter_mut().enumerate() {
                for v in 0..2 {
                    a[v] = _mm512_maskz_loadu_ps(masks[v], c.add(i * ldc + 16 * v));
                }
            }
            if let Some(bias) = self.bias {
                for v in 0..2 {
                    let b = _mm512_maskz_loadu_ps(masks[v], bias.as_ptr().add(col + 16 * v));
                    for a in acc.iter_mut() {
                        a[v] = _mm512_add_ps(a[v], b);
                    }
                }
            }
            if let Some(t) = &self.low_rank {
                for j in 0..t.rank {
                    let row_p = t.p.as_ptr().add(j * self.n + col);
                    let p = [
                        _mm512_maskz_loadu_ps(masks[0], row_p),
                        _mm512_maskz_loadu_ps(masks[1], row_p.add(16)),
                    ];
                    for (i, a) in acc.iter_mut().enumerate() {
                        let s = _mm512_set1_ps(t.scale * t.lhs[(row0 + i) * t.rank + j]);
                        for v in 0..2 {
                            a[v] = _mm512_fmadd_ps(s, p[v], a[v]);
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for v in 0..2 {
                    match self.round_to {
                        Some(out) => {
                            let dst = out.ptr().add((row0 + i) * self.n + col + 16 * v);
                            _mm256_mask_storeu_epi16(dst.cast(), masks[v], bf16_lanes(a[v]));
                        }
                        None => _mm512_mask_storeu_ps(dst.add(i * ldd + 16 * v), masks[v], a[v]),
                    }
                }
            }
        }
    }
}

impl Epilogue<'_> {
    /// [`Epilogue::finish`] with AVX2 registers: six rows (the AVX2 tile's) by 16 columns at
    /// a time, so the rank-r update runs as twelve independent FMA chains. The portable
    /// version, a row at a time, waited on each chain's latency: fusing a rank-8 adapter's
    /// term into a product made it ~30% slower on a 2-core Zen 3 where the term's arithmetic
    /// is ~1% of the product's. The same operations in the same order per element, so the
    /// same bits; columns past the last whole 16 take the portable path.
    ///
    /// # Safety
    /// As [`Epilogue::finish`]; the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn finish_avx2(&self, at: TileAt) {
        let TileAt {
            row: row0,
            col: col0,
            rows,
            cols,
            c,
            ldc,
            dst,
            ldd,
        } = at;
        let whole = cols / 16 * 16;
        for x in (0..whole).step_by(16) {
            let mut i = 0;
            while i + ROWS_AVX2 <= rows {
                // SAFETY: rows i..i + ROWS_AVX2, columns x..x + 16 (function contract).
                unsafe {
                    self.block_avx2::<ROWS_AVX2>(
                        (row0 + i, col0 + x),
                        (c.add(i * ldc + x), ldc),
                        (dst.add(i * ldd + x), ldd),
                    )
                };
                i += ROWS_AVX2;
            }
            for i in i..rows {
                // SAFETY: row i, columns x..x + 16.
                unsafe {
                    self.block_avx2::<1>(
                        (row0 + i, col0 + x),
                        (c.add(i * ldc + x), ldc),
                        (dst.add(i * ldd + x), ldd),
                    )
                };
            }
        }
        if whole < cols {
            // SAFETY: the tile's remaining columns (function contract).
            unsafe {
                self.finish(TileAt {
                    col: col0 + whole,
                    cols: cols - whole,
                    c: c.add(whole),
                    dst: dst.add(whole),
                    ..at
                })
            };
        }
    }

    /// `R` rows by 16 columns from (`row0`, `col`), read at `c` and (unrounded) stored at
    /// `dst`, each with its row stride.
    ///
    /// # Safety
    /// As [`Epilogue::finish_avx2`], for these elements.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block_avx2<const R: usize>(
        &self,
        (row0, col): (usize, usize),
        (c, ldc): (*const f32, usize),
        (dst, ldd): (*mut f32, usize),
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the 16 columns from `col` are inside the rows, the bias, p's rows and the
        // output (function contract); the CPU has AVX2 and FMA (caller).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (i, a) in acc.iter_mut().enumerate() {
                for (v, half) in a.iter_mut().enumerate() {
                    *half = _mm256_loadu_ps(c.add(i * ldc + 8 * v));
                }
            }
            if let Some(bias) = self.bias {
                for v in 0..2 {
                    let b = _mm256_loadu_ps(bias.as_ptr().add(col + 8 * v));
                    for a in acc.iter_mut() {
                        a[v] = _mm256_add_ps(a[v], b);
                    }
                }
            }
            if let Some(t) = &self.low_rank {
                for j in 0..t.rank {
                    let row_p = t.p.as_ptr().add(j * self.n + col);
                    let p = [_mm256_loadu_ps(row_p), _mm256_loadu_ps(row_p.add(8))];
                    for (i, a) in acc.iter_mut().enumerate() {
                        let s = _mm256_set1_ps(t.scale * t.lhs[(row0 + i) * t.rank + j]);
                        for v in 0..2 {
                            a[v] = _mm256_fmadd_ps(s, p[v], a[v]);
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (v, &half) in a.iter().enumerate() {
                    match self.round_to {
                        Some(out) => {
                            let dst = out.ptr().add((row0 + i) * self.n + col + 8 * v);
                            _mm_storeu_si128(dst.cast(), bf16_lanes_avx2(half));
                        }
                        None => _mm256_storeu_ps(dst.add(i * ldd + 8 * v), half),
                    }
                }
            }
        }
    }
}

/// Eight f32 lanes rounded to bf16 as [`f32_to_bf16_bits`] rounds each (nearest even,
/// NaN kept a quiet NaN), as eight u16 lanes.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bf16_lanes_avx2(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 (caller).
    unsafe {
        let bits = _mm256_castps_si256(v);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd);
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias));
        let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x40));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let lanes = _mm256_blendv_epi8(rounded, quiet, nan);
        // Every lane is below 2^16, so the saturating pack keeps it; the pack works within
        // each 128-bit half, and the permute brings the two halves' results together.
        let packed = _mm256_packus_epi32(lanes, lanes);
        _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
    }
}

/// Rows the AVX2 epilogue finishes at once: the AVX2 tile's (12 accumulators, two p
/// vectors and a broadcast fill 15 of the 16 ymm registers).
#[cfg(target_arch = "x86_64")]
const ROWS_AVX2: usize = 6;

/// Sixteen f32 lanes rounded to bf16 as [`f32_to_bf16_bits`] rounds each (nearest even,
/// NaN kept a quiet NaN).
///
/// # Safety
/// The CPU has AVX-512 F/BW.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bf16_lanes(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F/BW (caller).
    unsafe {
        let bits = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd);
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, bias));
        let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
    }
}

/// Rows an epilogue finishes at once.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 4;

/// Columns the portable epilogue holds at once.
const W: usize = 32;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The vector rounding gives the scalar's bits on the values where rounding is subtle:
    /// ties both ways, the carry into the exponent, infinities, and NaNs kept quiet.
    #[test]
    fn avx2_rounding_matches_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let values = [
            1.0f32,
            f32::from_bits(0x3f80_8000), // a tie, rounds down to even
            f32::from_bits(0x3f81_8000), // a tie, rounds up to even
            f32::from_bits(0x3f80_7fff),
            f32::from_bits(0x7f7f_ffff), // carries into infinity
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xff80_0001), // a signalling NaN
            -0.0,
            f32::from_bits(1), // subnormal
            -3.25,
            65504.0,
            1e-30,
            -7.0e37,
            0.1,
        ];
        for chunk in values.chunks(8) {
            // SAFETY: AVX2 checked above; eight values read, eight u16 written.
            let got: [u16; 8] = unsafe {
                use std::arch::x86_64::*;
                std::mem::transmute(bf16_lanes_avx2(_mm256_loadu_ps(chunk.as_ptr())))
            };
            for (v, g) in chunk.iter().zip(got) {
                assert_eq!(g, f32_to_bf16_bits(*v), "{v:e} ({:#x})", v.to_bits());
            }
        }
    }
}
