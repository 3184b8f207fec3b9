//! Products with one thin operand: a LoRA adapter's rank (`r`, a few to a few dozen rows)
//! against a token-by-feature matrix (thousands by thousands).
//!
//! The blocked GEMM runs these at a fraction of its speed: its tiles are mostly padding at
//! `r = 8`, and packing the big operand (transposed, for `g^T xa`) costs as much as the
//! product. They are bandwidth-bound streams over the big operand instead: each kernel
//! reads it once (per 8 of `r`), keeps the thin side in L1 and its sums in registers.
//! Results do not depend on the number of threads. Above [`MAX_RANK`] the GEMM is used.

use std::ops::Range;

use crate::cpu::gemm::{MatRef, gemm};
use crate::cpu::multiversion::multiversion;
use crate::cpu::{par, rowdot};
use crate::elem::Elem;

/// Above this rank the products go through the blocked GEMM, whose tiles are then full.
pub const MAX_RANK: usize = 32;

/// Columns of the big operand one kernel call of [`atb`] sums at a time (two 16-wide
/// vectors per accumulator row; eight rows of `r` at a time make 16 AVX-512 registers).
const COLS: usize = 32;
/// Rows of `r` [`atb`] accumulates per pass over the big operand.
const RANKS: usize = 8;
/// Most [`COLS`]-wide strips one task of [`atb`] owns.
const MAX_STRIPS: usize = 16;
/// Bytes of the big operand one row block of [`atb`] spans (what stays in L1 while the
/// task's strips walk it one after the other).
const ROW_BLOCK_BYTES: usize = 32 << 10;

/// `out = x P^T` (`[m, r]`) for rows `x` `[m, k]` of any float type and a thin f32 `p`
/// `[r, k]`: LoRA's `x A^T` and `g B` (with `B^T` as `p`).
///
/// Each thread takes a run of `x`'s rows and dots them in place against `p`
/// ([`rowdot::rows_dot`] with `p` as its few "input" rows), then transposes its `[r, rows]`
/// result into `out`.
pub fn xpt<T: Elem>(x: &[T], p: &[f32], k: usize, out: &mut [f32]) {
    let (m, r) = (x.len() / k.max(1), p.len() / k.max(1));
    if m == 0 || r == 0 {
        return;
    }
    if r > MAX_RANK {
        let pt = MatRef::row_major(p, r, k).t();
        gemm(MatRef::row_major(x, m, k), pt, out, r, 1.0, 0.0);
        return;
    }
    let rows = par::rows_per_task(m, 16);
    par::for_each_chunk_mut(out, rows * r, |task, out| {
        let (first, n) = (task * rows, out.len() / r);
        let mut tr = vec![0f32; r * n];
        rowdot::rows_dot(p, &x[first * k..(first + n) * k], k, &mut tr);
        transpose_into(&tr, r, n, out);
    });
}

/// `dst` (`[cols, rows]`, f32) = `src` (`[rows, cols]`, any float type) transposed: the
/// adapter's few-by-many matrices and results between their stored and product layouts.
pub fn transpose_into<T: Elem>(src: &[T], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        rows * cols,
        "transpose_into: dst is not [{cols}, {rows}]"
    );
    for (i, row) in src.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (j, v) in row.iter().enumerate() {
            dst[j * rows + i] = v.to_f32();
        }
    }
}

/// `out += scale * lhs P` for `out` `[m, n]`, `lhs` `[m, r]` and a thin `p` `[r, n]`, all
/// f32: LoRA's `y += s (x A^T) B^T` (with `B^T` as `p`) and `dx += s (g B) A`.
///
/// One pass over `out`: each row is read, gets its `r` scaled rows of `p` added (`p`
/// stays in cache), and is written back.
pub fn add_lp(lhs: &[f32], p: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    let (m, r) = (out.len() / n.max(1), p.len() / n.max(1));
    assert_eq!(lhs.len(), m * r, "add_lp: lhs is not [{m}, {r}]");
    if m == 0 || r == 0 {
        return;
    }
    if r > MAX_RANK {
        gemm(
            MatRef::row_major(lhs, m, r),
            MatRef::row_major(p, r, n),
            out,
            n,
            scale,
            1.0,
        );
        return;
    }
    let rows = par::rows_per_task(m, 16);
    par::for_each_chunk_mut(out, rows * n, |task, out| {
        let first = task * rows;
        let count = out.len() / n;
        add_lp_rows(&lhs[first * r..(first + count) * r], p, n, scale, out);
    });
}

/// Rows [`add_lp_rows`] takes at once.
const LP_GROUP_ROWS: usize = 4;

multiversion! {
    /// `out += scale * lhs P` over whole rows. Rows go four at a time: each 64-column piece
    /// of `P`'s `r` rows is loaded once for the four (16 vector sums in registers). One row
    /// at a time re-read all of `P` (`r x n` f32, 90 KB at n = 2816: L2, not L1) per row,
    /// which held the pass at ~15% of the FMA rate. Every element's sum is the same FMA
    /// chain over `j` either way.
    fn add_lp_rows(lhs: &[f32], p: &[f32], n: usize, scale: f32, out: &mut [f32]) {
        /// `ROWS` rows of `out` and their `ROWS x r` coefficients.
        #[inline(always)]
        fn rows_block<const ROWS: usize>(
            rows: &mut [f32],
            coefs: &[f32],
            p: &[f32],
            n: usize,
            scale: f32,
        ) {
            const W: usize = 64;
            let r = p.len() / n;
            let mut c0 = 0;
            while c0 + W <= n {
                let mut acc = [[0f32; W]; ROWS];
                for (i, a) in acc.iter_mut().enumerate() {
                    a.copy_from_slice(&rows[i * n + c0..i * n + c0 + W]);
                }
                for j in 0..r {
                    let pr = &p[j * n + c0..j * n + c0 + W];
                    for (i, a) in acc.iter_mut().enumerate() {
                        let s = scale * coefs[i * r + j];
                        for c in 0..W {
                            a[c] = s.mul_add(pr[c], a[c]);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    rows[i * n + c0..i * n + c0 + W].copy_from_slice(a);
                }
                c0 += W;
            }
            for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                for (c, o) in row.iter_mut().enumerate().skip(c0) {
                    for j in 0..r {
                        *o = (scale * coefs[i * r + j]).mul_add(p[j * n + c], *o);
                    }
                }
            }
        }
        let r = p.len() / n;
        let mut groups = out.chunks_exact_mut(LP_GROUP_ROWS * n);
        let mut coef_groups = lhs.chunks_exact(LP_GROUP_ROWS * r);
        for (group, coefs) in (&mut groups).zip(&mut coef_groups) {
            rows_block::<LP_GROUP_ROWS>(group, coefs, p, n, scale);
        }
        let (rest, rest_coefs) = (groups.into_remainder(), coef_groups.remainder());
        for (row, coefs) in rest.chunks_exact_mut(n).zip(rest_coefs.chunks_exact(r)) {
            rows_block::<1>(row, coefs, p, n, scale);
        }
    }
}

/// `out = scale * A^T B`, stored `[n, r]` (`out[c * r + j]`), for `a` `[m, n]` of any float
/// type and a thin f32 `b` `[m, r]`: LoRA's `dB = s g^T (x A^T)` (`[out, r]`, as B is
/// stored) and, transposed afterwards, `dA = s (g B)^T x`.
///
/// Each task owns a few [`COLS`]-wide strips of `a`'s columns and walks `a`'s rows in
/// blocks: within a block each strip in turn adds its rows times their 8 coefficients of
/// `b` into `8 x COLS` register sums, picked up from and put back to the task's sums. One
/// strip walking all `m` rows read one cache line per row, at a stride of a whole row (a
/// new page every row or two): far from cache, that ran at a fifth of the memory's speed.
/// Blocked, a task reads `strips x COLS` contiguous values per row and its other strips
/// find them in L1. Every sum is still one chain of fused multiply-adds in row order, so
/// the bits are those of the unblocked walk and do not depend on the number of threads.
/// `a` is read once per 8 of `r` and never packed or transposed.
pub fn atb<T: Elem>(a: &[T], n: usize, b: &[f32], r: usize, scale: f32, out: &mut [f32]) {
    let m = a.len() / n.max(1);
    assert_eq!(b.len(), m * r, "atb: b is not [{m}, {r}]");
    assert_eq!(out.len(), n * r, "atb: out is not [{n}, {r}]");
    if n == 0 || r == 0 {
        return;
    }
    if m == 0 {
        out.fill(0.0);
        return;
    }
    if r > MAX_RANK {
        gemm(
            MatRef::row_major(a, m, n).t(),
            MatRef::row_major(b, m, r),
            out,
            r,
            scale,
            0.0,
        );
        return;
    }
    // `b` with its rank padded to a multiple of RANKS (zeros), so every pass has 8 rows.
    let rp = r.div_ceil(RANKS) * RANKS;
    let padded;
    let b = if rp == r {
        b
    } else {
        let mut bp = vec![0f32; m * rp];
        for (dst, src) in bp.chunks_exact_mut(rp).zip(b.chunks_exact(r)) {
            dst[..r].copy_from_slice(src);
        }
        padded = bp;
        &padded[..]
    };
    // A few tasks per thread for balance, at most MAX_STRIPS strips each.
    let strips = n.div_ceil(COLS);
    let per_task = strips.div_ceil(par::threads() * 4).clamp(1, MAX_STRIPS);
    let row_block = (ROW_BLOCK_BYTES / (per_task * COLS * size_of::<T>())).max(8);
    par::for_each_chunk_mut(out, per_task * COLS * r, |task, out| {
        let c_start = task * per_task * COLS;
        let width = out.len() / r;
        let mut sums = vec![[[0f32; COLS]; RANKS]; width.div_ceil(COLS)];
        for j0 in (0..rp).step_by(RANKS) {
            sums.fill([[0f32; COLS]; RANKS]);
            for i0 in (0..m).step_by(row_block) {
                for (s, strip_sums) in sums.iter_mut().enumerate() {
                    let pass = Pass {
                        n,
                        c0: c_start + s * COLS,
                        width: (width - s * COLS).min(COLS),
                        rows: i0..(i0 + row_block).min(m),
                        ahead: row_block * n,
                        b,
                        rp,
                        j0,
                    };
                    atb_columns(a, pass, strip_sums);
                }
            }
            for (c, row) in out.chunks_exact_mut(r).enumerate() {
                let strip_sums = &sums[c / COLS];
                for (jj, o) in row.iter_mut().enumerate().skip(j0).take(RANKS) {
                    *o = scale * strip_sums[jj - j0][c % COLS];
                }
            }
        }
    });
}

/// One pass of [`atb`]: columns `c0..c0 + width` of `a`'s rows `rows` (`a` is `[m, n]`)
/// against ranks `j0..j0 + RANKS` of the padded coefficients `b` (`[m, rp]`).
#[derive(Clone)]
struct Pass<'a> {
    n: usize,
    c0: usize,
    width: usize,
    rows: Range<usize>,
    /// Elements from a row to what the kernel prefetches with it: the same columns one
    /// row block later, which the strip reads next after the task's other strips. The
    /// hardware prefetcher did not follow a strip's walk down the rows (a row or more apart
    /// and one or two lines each): bf16 products over 5.6k columns ran 1.6-2x faster
    /// with this. (Only the x86 kernels prefetch.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    ahead: usize,
    b: &'a [f32],
    rp: usize,
    j0: usize,
}

/// `sums[jj][c] += sum_i a[i, c0 + c] * b[i, j0 + jj]` over the pass's rows `i`, for
/// `c < width`, `jj < RANKS`: each sum continues its chain of fused multiply-adds in row
/// order (the same bits on every path).
fn atb_columns<T: Elem>(a: &[T], p: Pass, sums: &mut [[f32; COLS]; RANKS]) {
    #[cfg(target_arch = "x86_64")]
    if p.width == COLS {
        use crate::cpu::isa::{Isa, active};
        use crate::elem::Typed;
        // SAFETY (each arm): `active()` only reports levels whose features the CPU has;
        // the pass lies inside `a` and `b` (checked by the kernels).
        match (active(), T::typed(a)) {
            (Isa::Avx512 | Isa::Avx512Bf16, Typed::F32(a)) => {
                return unsafe { x86::atb_avx512(a, p, sums) };
            }
            (Isa::Avx512 | Isa::Avx512Bf16, Typed::BF16(a)) => {
                return unsafe { x86::atb_avx512(a, p, sums) };
            }
            (Isa::Avx2, Typed::F32(a)) => return unsafe { x86::atb_avx2(a, p, sums) },
            (Isa::Avx2, Typed::BF16(a)) => return unsafe { x86::atb_avx2(a, p, sums) },
            _ => {}
        }
    }
    let mut acc = *sums;
    for i in p.rows {
        let src = &a[i * p.n + p.c0..i * p.n + p.c0 + p.width];
        let coefs = &p.b[i * p.rp + p.j0..i * p.rp + p.j0 + RANKS];
        for (jj, &s) in coefs.iter().enumerate() {
            for (sum, v) in acc[jj].iter_mut().zip(src) {
                *sum = s.mul_add(v.to_f32(), *sum);
            }
        }
    }
    *sums = acc;
}

/// [`atb_columns`]' full-width passes with explicit vectors: left to itself the compiler
/// vectorised the portable loop across the ranks, with gathers, at a third of the speed.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{COLS, Pass, RANKS};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Widening loads of 16 (AVX-512) or 8 (AVX2) values to f32.
    pub(super) trait Widen: Copy {
        /// # Safety
        /// `p..p + 16` must be readable; AVX-512F must be available.
        unsafe fn load16(p: *const Self) -> __m512;
        /// # Safety
        /// `p..p + 8` must be readable; AVX2 must be available.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Widen for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Widen for bf16 {
        // bf16 is the top half of an f32: zero-extend and shift, exact.
        #[inline(always)]
        unsafe fn load16(p: *const bf16) -> __m512 {
            unsafe {
                let h = _mm256_loadu_si256(p as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            unsafe {
                let h = _mm_loadu_si128(p as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
        }
    }

    fn check<T>(a: &[T], p: &Pass) {
        let rows = a.len() / p.n;
        assert!(p.c0 + COLS <= p.n && p.j0 + RANKS <= p.rp && p.b.len() >= rows * p.rp);
        assert!(p.rows.end <= rows);
    }

    /// Two 16-wide column vectors times 8 ranks: 16 accumulators in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) unsafe fn atb_avx512<T: Widen>(a: &[T], p: Pass, sums: &mut [[f32; COLS]; RANKS]) {
        check(a, &p);
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 2 * RANKS];
            for (jj, sum) in sums.iter().enumerate() {
                acc[2 * jj] = _mm512_loadu_ps(sum.as_ptr());
                acc[2 * jj + 1] = _mm512_loadu_ps(sum.as_ptr().add(16));
            }
            for i in p.rows {
                let row = a.as_ptr().add(i * p.n + p.c0);
                let ahead = row.wrapping_add(p.ahead) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(COLS * size_of::<T>() - 1));
                let (x0, x1) = (T::load16(row), T::load16(row.add(16)));
                let coefs = p.b.as_ptr().add(i * p.rp + p.j0);
                for jj in 0..RANKS {
                    let s = _mm512_set1_ps(*coefs.add(jj));
                    acc[2 * jj] = _mm512_fmadd_ps(s, x0, acc[2 * jj]);
                    acc[2 * jj + 1] = _mm512_fmadd_ps(s, x1, acc[2 * jj + 1]);
                }
            }
            for (jj, sum) in sums.iter_mut().enumerate() {
                _mm512_storeu_ps(sum.as_mut_ptr(), acc[2 * jj]);
                _mm512_storeu_ps(sum.as_mut_ptr().add(16), acc[2 * jj + 1]);
            }
        }
    }

    /// Each 16-column half in turn (two 8-wide vectors times 8 ranks: 16 accumulators,
    /// what AVX2's 16 registers hold beside the row and the broadcast).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn atb_avx2<T: Widen>(a: &[T], p: Pass, sums: &mut [[f32; COLS]; RANKS]) {
        check(a, &p);
        unsafe {
            for half in [0, 16] {
                let mut acc = [_mm256_setzero_ps(); 2 * RANKS];
                for (jj, sum) in sums.iter().enumerate() {
                    acc[2 * jj] = _mm256_loadu_ps(sum.as_ptr().add(half));
                    acc[2 * jj + 1] = _mm256_loadu_ps(sum.as_ptr().add(half + 8));
                }
                for i in p.rows.clone() {
                    let row = a.as_ptr().add(i * p.n + p.c0 + half);
                    let ahead = row.wrapping_add(p.ahead) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * size_of::<T>() - 1));
                    let (x0, x1) = (T::load8(row), T::load8(row.add(8)));
                    let coefs = p.b.as_ptr().add(i * p.rp + p.j0);
                    for jj in 0..RANKS {
                        let s = _mm256_set1_ps(*coefs.add(jj));
                        acc[2 * jj] = _mm256_fmadd_ps(s, x0, acc[2 * jj]);
                        acc[2 * jj + 1] = _mm256_fmadd_ps(s, x1, acc[2 * jj + 1]);
                    }
                }
                for (jj, sum) in sums.iter_mut().enumerate() {
                    _mm256_storeu_ps(sum.as_mut_ptr().add(half), acc[2 * jj]);
                    _mm256_storeu_ps(sum.as_mut_ptr().add(half + 8), acc[2 * jj + 1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f64], label: &str) {
        assert_eq!(got.len(), want.len(), "{label}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-5 * (1.0 + w.abs());
            assert!(
                (g as f64 - w).abs() <= tol,
                "{label}: element {i}: {g} vs {w}"
            );
        }
    }

    /// Ranks around the 8-row passes and the GEMM switch, column counts around the
    /// kernels' blocks (tails of every size class), a few rows.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (5, 8, 32),
        (17, 3, 64),
        (33, 8, 100),
        (64, 13, 200),
        (9, 32, 70),
        (12, 40, 65),
    ];

    #[test]
    fn add_lp_adds_the_scaled_product_to_what_is_there() {
        for (m, r, n) in SHAPES {
            let lhs = values(m * r, 1);
            let p = values(r * n, 2);
            let start = values(m * n, 3);
            let mut out = start.clone();
            add_lp(&lhs, &p, n, 0.5, &mut out);
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, c) = (e / n, e % n);
                    let dot: f64 = (0..r)
                        .map(|j| lhs[i * r + j] as f64 * p[j * n + c] as f64)
                        .sum();
                    start[e] as f64 + 0.5 * dot
                })
                .collect();
            close(&out, &want, &format!("add_lp {m}x{r}x{n}"));
            if r > MAX_RANK {
                continue; // the GEMM's sums
            }
            // Bit for bit the plain loop: one FMA chain over the rank per element.
            let mut plain = start.clone();
            for (e, o) in plain.iter_mut().enumerate() {
                let (i, c) = (e / n, e % n);
                for j in 0..r {
                    *o = (0.5 * lhs[i * r + j]).mul_add(p[j * n + c], *o);
                }
            }
            assert_eq!(out, plain, "add_lp {m}x{r}x{n}: not the plain FMA chain");
        }
    }

    #[test]
    fn atb_sums_over_rows_into_an_n_by_r_result() {
        for (m, r, n) in SHAPES {
            let a = values(m * n, 4);
            let b = values(m * r, 5);
            let want: Vec<f64> = (0..n * r)
                .map(|e| {
                    let (c, j) = (e / r, e % r);
                    let dot: f64 = (0..m)
                        .map(|i| a[i * n + c] as f64 * b[i * r + j] as f64)
                        .sum();
                    2.0 * dot
                })
                .collect();
            let mut out = vec![f32::NAN; n * r];
            atb(&a, n, &b, r, 2.0, &mut out);
            close(&out, &want, &format!("atb f32 {m}x{r}x{n}"));
            // bf16 rows widen exactly: the same sums over the rounded values.
            let a16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let want16: Vec<f64> = (0..n * r)
                .map(|e| {
                    let (c, j) = (e / r, e % r);
                    let dot: f64 = (0..m)
                        .map(|i| a16[i * n + c].to_f64() * b[i * r + j] as f64)
                        .sum();
                    2.0 * dot
                })
                .collect();
            let mut out16 = vec![f32::NAN; n * r];
            atb(&a16, n, &b, r, 2.0, &mut out16);
            close(&out16, &want16, &format!("atb bf16 {m}x{r}x{n}"));
        }
    }

    /// Each sum is one f32 fused multiply-add chain in row order, whatever the row blocks,
    /// strips per task and vector width: the bits of the plain loop. (Shapes with several
    /// row blocks and several strips per task, with and without a narrow last strip.)
    #[test]
    fn atb_sums_are_row_order_fma_chains_bit_for_bit() {
        for (m, r, n) in [
            (300, 8, 1000),
            (700, 16, 520),
            (129, 5, 2048),
            (64, 8, 4096),
        ] {
            let a = values(m * n, 8);
            let b = values(m * r, 9);
            let a16: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
            let chain = |a: &dyn Fn(usize) -> f32| -> Vec<u32> {
                (0..n * r)
                    .map(|e| {
                        let (c, j) = (e / r, e % r);
                        let sum = (0..m).fold(0f32, |s, i| b[i * r + j].mul_add(a(i * n + c), s));
                        (0.5 * sum).to_bits()
                    })
                    .collect()
            };
            let mut out = vec![f32::NAN; n * r];
            atb(&a, n, &b, r, 0.5, &mut out);
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, chain(&|e| a[e]), "f32 {m}x{r}x{n}");
            atb(&a16, n, &b, r, 0.5, &mut out);
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, chain(&|e| a16[e].to_f32()), "bf16 {m}x{r}x{n}");
        }
    }

    #[test]
    fn atb_of_no_rows_is_zero() {
        let mut out = vec![f32::NAN; 6];
        atb::<f32>(&[], 3, &[], 2, 1.0, &mut out);
        assert_eq!(out, vec![0.0; 6]);
    }

    #[test]
    fn xpt_dots_rows_with_the_thin_rows() {
        for (m, r, k) in SHAPES {
            let x = values(m * k, 6);
            let p = values(r * k, 7);
            let want: Vec<f64> = (0..m * r)
                .map(|e| {
                    let (i, j) = (e / r, e % r);
                    (0..k)
                        .map(|t| x[i * k + t] as f64 * p[j * k + t] as f64)
                        .sum()
                })
                .collect();
            let mut out = vec![f32::NAN; m * r];
            xpt(&x, &p, k, &mut out);
            close(&out, &want, &format!("xpt {m}x{r}x{k}"));
        }
    }
}
