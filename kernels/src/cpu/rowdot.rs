//! Dot products of f32 rows against weight rows: `out = x W^T` for a few rows of `x`.
//!
//! This is the inference decode step's product: each running sequence contributes one row,
//! so `x` has a handful of rows while `W` (`[n, k]`, f32, bf16 or f16) is large. Packing
//! `W` as a blocked GEMM does would cost a full pass over it per call, so instead each
//! weight row is read in place and widened to f32 in registers. With several input rows a
//! register tile of 3 weight rows by up to 4 input rows keeps the FMA units busy; one
//! factor of each FMA comes straight from memory, so even 12 accumulators fit in AVX2's 16
//! registers without spilling: 3 x 4 tiles, 7 loads per 12 FMAs, and a 16-bit weight
//! vector is widened once for 4 rows. On Zen 3, one thread, bf16 weights, 3 x 3 -> 3 x 4
//! took 4 rows from ~55 to ~75 GFLOP/s, 16 rows from ~65 to ~76 and 64 from ~69 to ~77.
//! For f32 weights 3 x 4 first measured mixed; the cause was the loop, not the tile: a
//! test of the prefetch schedule in every step left it short of general registers, and it
//! reloaded its row pointers from the stack each step. With the prefetches issued once per
//! 64 values and the pointers held in registers, f32 3 x 3 -> 3 x 4 on the same shapes went
//! (old and new binaries alternating): 16 rows ~64-69 -> ~75-79 GFLOP/s at depth 896-1024
//! and ~60 -> ~70 at depth 2816-4864, where three weight rows no longer fit in L1 beside the
//! inputs and every extra tile reads them from L2 again; 64 rows ~77-79 -> ~83-89.
//! (The 4 x 2 tile before 3 x 3 needed 6 loads per 8 FMAs; on one-load-a-cycle Zen 1,
//! 3 x 3 took 16 rows from ~28 to ~32 GFLOP/s a thread.) So a batch of 16 is
//! compute-bound; one row streams the weight at memory speed (one weight row at a time,
//! except 16-bit weights without AVX-512, four: see [`TILE_W_ONE_ROW_F32`]). While a
//! block of weight rows is being used by several input rows, or by four 16-bit rows, the
//! next block is prefetched (`column_block` says when): the first pass over a block
//! otherwise waits on memory with nothing to overlap.
//!
//! Every output element is accumulated the same way wherever it falls in a tile (8 f32
//! lanes over `k` in order, or 16 for 16-bit weights on AVX-512; a fixed horizontal sum,
//! then the scalar tail), so a row's result does not depend on how many other rows share
//! the call: batched and single-sequence generation agree bit for bit.
//!
//! Compiled in this crate because it is optimised even in dev builds (see the workspace
//! profile): at opt-level 1 the tile's loops are not unrolled and its accumulators live on
//! the stack, which made decode 5x slower.

#[cfg(target_arch = "x86_64")]
use crate::cpu::isa::{self, Isa};
use crate::cpu::math::exp;
use crate::cpu::multiversion::multiversion;
use crate::elem::Elem;
#[cfg(target_arch = "x86_64")]
use crate::elem::Typed;

/// Weight rows per register tile when several input rows share them (3 x 4 tiles: see
/// the module docs).
const TILE_W: usize = 3;

/// Weight rows per register tile for one input row (a pure stream of the weight), by
/// weight width. f32 reads one row at a time: a single sequential stream is what the
/// hardware prefetcher follows best, and one FMA chain still consumes 32 bytes per FMA
/// latency (~29 GB/s a core on Zen 4), more than memory delivers. 4 rows at once (4
/// streams a row apart, rows of 2-4 KiB) left the prefetcher retraining at every row:
/// on a 2-core Zen 4 VM, 2 threads over every batch-1 product of a token, medians of 55
/// alternated passes, Qwen2-100M shapes 39 -> 47 GB/s and SmolLM2-135M's (hidden 576,
/// rows of 2.3 KiB) 30 -> 47 GB/s (software prefetch of the next block instead gave 46
/// and 41). A 16-bit row is widened before its FMA and one chain would consume only 16
/// bytes per latency (measured 25-31 GB/s for two threads), so with AVX2 those keep 4
/// rows, with the next block prefetched (34-39 GB/s there against 25-31 for one row);
/// with AVX-512 see [`TILE_W_ONE_ROW_16BIT_AVX512`].
#[cfg(target_arch = "x86_64")]
const TILE_W_ONE_ROW_F32: usize = 1;
const TILE_W_ONE_ROW_16BIT: usize = 4;

/// With AVX-512 a 16-bit row's single chain takes 16 values per FMA latency, as f32's does
/// with AVX2, so it too reads one row at a time: SmolLM2-135M's bf16 shapes 33 -> 40 GB/s
/// (Qwen2-100M's 41 either way), same VM and method as above.
#[cfg(target_arch = "x86_64")]
const TILE_W_ONE_ROW_16BIT_AVX512: usize = 1;

/// Rows shorter than this (a head's cached keys in decode attention: 64-128 values) are
/// read four at a time even in f32: four short rows are one contiguous run anyway, and
/// one FMA chain per row would leave a 64-value key waiting on 8 dependent FMAs.
#[cfg(target_arch = "x86_64")]
const SHORT_ROW_BYTES: usize = 1024;
#[cfg(target_arch = "x86_64")]
const TILE_W_SHORT_ROWS: usize = 4;

/// A multiple of every tile width.
const COLUMN_ALIGN: usize = TILE_W * TILE_W_ONE_ROW_16BIT;

/// Width of the column (weight-row) ranges to split `n` columns into for `threads`
/// threads: about four ranges per thread for balance, each a whole number of register
/// tiles of either width, so no range ends in a partial tile.
pub fn column_chunk(n: usize, threads: usize) -> usize {
    n.div_ceil(threads.max(1) * 4)
        .next_multiple_of(COLUMN_ALIGN)
        .max(COLUMN_ALIGN)
}

/// Input rows per register tile (3 x 4 tiles: see the module docs).
#[cfg(any(target_arch = "x86_64", test))]
const TILE_X: usize = 4;

/// How `m` input rows split into register tiles of at most [`TILE_X`] rows: how many
/// tiles of 4, 3, 2 and 1 rows. A remainder of one row is folded into tiles of 3 and 2 (a
/// lone row would load its weight rows for one FMA each); only `m == 1` runs a 1-row tile.
#[cfg(any(target_arch = "x86_64", test))]
fn x_tiles(m: usize) -> [usize; 4] {
    match (m / TILE_X, m % TILE_X) {
        (0, 1) => [0, 0, 0, 1],
        (t, 1) => [t - 1, 1, 1, 0],
        (t, 2) => [t, 0, 1, 0],
        (t, 3) => [t, 1, 0, 0],
        (t, _) => [t, 0, 0, 0],
    }
}

/// `out[i * n + j] = dot(x[i], w[j])` for `x` `[m, k]` and `w` `[n, k]` row-major, `out`
/// `[m, n]`.
///
/// # Panics
/// If `k` is zero or the slice lengths are not `m * k`, `n * k` and `m * n` (caller bugs).
pub fn rows_dot<T: Elem>(x: &[f32], w: &[T], k: usize, out: &mut [f32]) {
    let (m, n) = check_shapes(x, w, k);
    assert_eq!(out.len(), m * n, "rows_dot: out must be [{m}, {n}]");
    // SAFETY: `out` holds exactly `m * n` values and is borrowed mutably for the call.
    unsafe { rows_dot_unchecked(x, w, k, out.as_mut_ptr(), n) }
}

/// [`rows_dot`] into a column block of a wider output: row `i`'s `n` results go to
/// `out[i * ldo .. i * ldo + n]`. Threads fill disjoint column ranges of one output in
/// place this way; a block per thread copied over afterwards cost a serving step's
/// engine thread ~4% of its time in zeroing and copying while the other cores waited.
///
/// # Safety
/// `out` must be valid for writes at every `i * ldo + j` (`i < m`, `j < n`, with `m`
/// and `n` the rows of `x` and `w`), `ldo >= n`, and no other thread may access those
/// elements during the call.
///
/// # Panics
/// If `k` is zero or `x` and `w` are not whole rows of `k` (caller bugs).
pub unsafe fn rows_dot_strided<T: Elem>(x: &[f32], w: &[T], k: usize, out: *mut f32, ldo: usize) {
    let (_, n) = check_shapes(x, w, k);
    assert!(ldo >= n, "rows_dot_strided: row stride {ldo} < {n} columns");
    // SAFETY: forwarded from the caller.
    unsafe { rows_dot_unchecked(x, w, k, out, ldo) }
}

/// `(m, n)`: the rows of `x` and of `w`.
fn check_shapes<T: Elem>(x: &[f32], w: &[T], k: usize) -> (usize, usize) {
    assert!(
        k > 0 && x.len().is_multiple_of(k) && w.len().is_multiple_of(k),
        "rows_dot: x ({}) and w ({}) must be whole rows of k = {k}",
        x.len(),
        w.len()
    );
    (x.len() / k, w.len() / k)
}

/// # Safety
/// As [`rows_dot_strided`], shapes already checked.
unsafe fn rows_dot_unchecked<T: Elem>(x: &[f32], w: &[T], k: usize, out: *mut f32, ldo: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx2 {
        let (m, n) = (x.len() / k, w.len() / k);
        let avx512 = isa::active() >= Isa::Avx512;
        // SAFETY: the CPU has AVX2/FMA/F16C, and AVX-512F where `avx512` (`active` never
        // reports more than it has); the shapes were checked and `out` is the caller's
        // promise.
        unsafe {
            match T::typed(w) {
                Typed::BF16(w) if avx512 => {
                    avx512::rows_dot_bf16(x.as_ptr(), w.as_ptr(), k, m, n, out, ldo)
                }
                Typed::F16(w) if avx512 => {
                    avx512::rows_dot_f16(x.as_ptr(), w.as_ptr(), k, m, n, out, ldo)
                }
                Typed::F32(w) => avx2::rows_dot_f32(x.as_ptr(), w.as_ptr(), k, m, n, out, ldo),
                Typed::BF16(w) => avx2::rows_dot_bf16(x.as_ptr(), w.as_ptr(), k, m, n, out, ldo),
                Typed::F16(w) => avx2::rows_dot_f16(x.as_ptr(), w.as_ptr(), k, m, n, out, ldo),
            }
        }
        return;
    }
    for (i, xr) in x.chunks_exact(k).enumerate() {
        for (j, wr) in w.chunks_exact(k).enumerate() {
            // SAFETY: `i < m`, `j < n`: inside what the caller promised.
            unsafe { *out.add(i * ldo + j) = scalar_dot(xr, wr) };
        }
    }
}

/// `dot(a, b)` over the common length, accumulated as [`rows_dot`] does.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    if k == 0 {
        return 0.0;
    }
    let mut out = [0f32];
    rows_dot(&a[..k], &b[..k], k, &mut out);
    out[0]
}

/// `y += alpha * x` over equal lengths.
///
/// # Panics
/// If the lengths differ (a caller bug).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx2 {
        // SAFETY: AVX2/FMA present; equal lengths checked.
        unsafe { avx2::axpy(alpha, x.as_ptr(), y.as_mut_ptr(), x.len()) };
        return;
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// One query row's attention over `keys` cached keys and values: `out = softmax(scale *
/// K q) V`, with `k` and `v` `[keys, d]` row-major (`d = q.len()`), in f32 or, as a
/// bf16/f16 model's cache holds them, in its dtype (widened as they are read), and
/// `scores` a scratch buffer reused between calls. An empty key set leaves `out` zero.
///
/// # Panics
/// If `k`, `v` and `out` do not match `q`'s width (caller bugs).
pub fn attend<T: Elem>(
    q: &[f32],
    k: &[T],
    v: &[T],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    assert!(
        d > 0 && k.len() == v.len() && out.len() == d,
        "attend: shapes differ"
    );
    let keys = k.len() / d;
    out.fill(0.0);
    if keys == 0 {
        return;
    }
    scores.clear();
    scores.resize(keys, 0.0);
    rows_dot(q, k, d, scores);
    let mut max = f32::NEG_INFINITY;
    for s in scores.iter_mut() {
        *s *= scale;
        max = max.max(*s);
    }
    let inv = 1.0 / exp_shifted_sum(scores, max);
    for p in scores.iter_mut() {
        *p *= inv;
    }
    weighted_sum(scores, v, out);
}

/// `out = sum_j p[j] * v[j]` over the rows `v[j]` (`[p.len(), out.len()]` row-major),
/// accumulated per element in row order as `p.len()` calls of [`axpy`] from zero would
/// (the same bits), but with each 64-value column block held in registers across all the
/// rows instead of loaded and stored once per row: a decode step's attention weighs ~100
/// cached values per head, and the per-row [`axpy`] was ~4% of its time.
///
/// # Panics
/// If `v` is not `p.len()` rows of `out.len()` (a caller bug).
pub fn weighted_sum<T: Elem>(p: &[f32], v: &[T], out: &mut [f32]) {
    let d = out.len();
    assert_eq!(v.len(), p.len() * d, "weighted_sum: v must be [rows, d]");
    out.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx2 {
        // SAFETY: AVX2/FMA/F16C present; `v` holds `p.len() * d` values, checked above.
        unsafe {
            match T::typed(v) {
                Typed::F32(v) => avx2::weighted_sum_f32(p, v.as_ptr(), out),
                Typed::BF16(v) => avx2::weighted_sum_bf16(p, v.as_ptr(), out),
                Typed::F16(v) => avx2::weighted_sum_f16(p, v.as_ptr(), out),
            }
        }
        return;
    }
    for (&pj, vr) in p.iter().zip(v.chunks_exact(d.max(1))) {
        // As `axpy` does it: a multiply and an add, not fused.
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += pj * x.to_f32();
        }
    }
}

multiversion! {
    /// `s[i] = e^(s[i] - max)` in place (the vectorised polynomial, not a libm call per
    /// key); returns their sum. Summed in 8 lanes then folded, a fixed order, so a
    /// sequence's softmax does not depend on anything but its own scores.
    fn exp_shifted_sum(scores: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0f32; 8];
        let mut chunks = scores.chunks_exact_mut(8);
        for chunk in &mut chunks {
            for (s, lane) in chunk.iter_mut().zip(lanes.iter_mut()) {
                *s = exp(*s - max);
                *lane += *s;
            }
        }
        let mut sum = lanes.iter().sum::<f32>();
        for s in chunks.into_remainder() {
            *s = exp(*s - max);
            sum += *s;
        }
        sum
    }
}

fn scalar_dot<T: Elem>(x: &[f32], w: &[T]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
}

/// The batch-of-rows product for one weight type, over a module's vector primitives
/// (`V`, `LANES`, `zero`, `load_x`, `fmadd`, `hsum` and the weight load `$load`): the same
/// tiles and accumulation order (`LANES` lanes over `k` in order, `hsum`, then the scalar
/// tail) at either vector width.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_dot {
    ($name:ident, $t:ty, $load:ident, $one_row_tile:expr, $features:literal) => {
        /// One step of a tile: `LANES` values of `k` from `i`, `R` weight rows against `M`
        /// input rows (the weight vectors widened once, shared by the rows).
        #[inline(always)]
        unsafe fn step<const R: usize, const M: usize>(
            acc: &mut [[V; R]; M],
            xr: &[*const f32; M],
            wr: &[*const $t; R],
            i: usize,
        ) {
            unsafe {
                let wv: [V; R] = std::array::from_fn(|r| $load(wr[r].add(i)));
                for (row, x) in acc.iter_mut().zip(xr) {
                    let xv = load_x(x.add(i));
                    for (a, w) in row.iter_mut().zip(&wv) {
                        *a = fmadd(xv, *w, *a);
                    }
                }
            }
        }

        /// `R` weight rows against `M` input rows; results go to `out` (row stride `ldo`).
        /// Along the way, asks for the `prefetch` bytes starting at `ahead` (see
        /// `column_block`), spread evenly over the loop.
        #[inline(always)]
        unsafe fn tile<const R: usize, const M: usize>(
            x: *const f32,
            w: *const $t,
            k: usize,
            out: *mut f32,
            ldo: usize,
            ahead: *const $t,
            prefetch: usize,
        ) {
            unsafe {
                let mut acc = [[zero(); R]; M];
                let xr: [*const f32; M] = std::array::from_fn(|mi| x.add(mi * k));
                let wr: [*const $t; R] = std::array::from_fn(|r| w.add(r * k));
                // One group = 64 weights per row; `per_group` lines are asked for in
                // each, before its eight steps (not tested per step: see the module
                // docs).
                let per_group = (prefetch / 64).div_ceil(k.div_ceil(64));
                let ahead = ahead as *const i8;
                let mut asked = 0;
                let mut i = 0;
                while i + 64 <= k {
                    let lines = per_group.min((prefetch - asked) / 64);
                    for l in 0..lines {
                        // A hint: it never faults.
                        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(asked + 64 * l));
                    }
                    asked += 64 * lines;
                    for j in 0..64 / LANES {
                        step::<R, M>(&mut acc, &xr, &wr, i + LANES * j);
                    }
                    i += 64;
                }
                while i + LANES <= k {
                    step::<R, M>(&mut acc, &xr, &wr, i);
                    i += LANES;
                }
                for (mi, row) in acc.iter().enumerate() {
                    for (r, a) in row.iter().enumerate() {
                        let mut s = hsum(*a);
                        for j in i..k {
                            s += *x.add(mi * k + j) * Elem::to_f32(*w.add(r * k + j));
                        }
                        *out.add(mi * ldo + r) = s;
                    }
                }
            }
        }

        /// All `m` input rows against weight rows `[c, c + R)`.
        ///
        /// With several input rows, the first tile reads the block's weight rows from
        /// memory and the others from cache. Left alone, that first pass waits on
        /// memory while the rest compute; so each tile also asks for a share of the
        /// next block (into L2), and by the time it starts its rows are near. With one
        /// input row it pays for 16-bit weights read four rows at a time (widening them
        /// is work to overlap: Qwen2-100M bf16 decode went from 85-90 to 115-126 tok/s)
        /// but not for a weight read one row at a time, a single stream the hardware
        /// prefetcher keeps busy (see [`TILE_W_ONE_ROW_F32`]), so that is left to it.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn column_block<const R: usize>(
            x: *const f32,
            w: *const $t,
            k: usize,
            m: usize,
            out: *mut f32,
            n: usize,
            ldo: usize,
            c: usize,
        ) {
            unsafe {
                let next = w.wrapping_add((c + R) * k);
                let w = w.add(c * k);
                let overlap = m >= 2 || (R > 1 && size_of::<$t>() < size_of::<f32>());
                let next_bytes = if overlap && c + 2 * R <= n {
                    R * k * size_of::<$t>()
                } else {
                    0
                };
                let [fours, threes, twos, ones] = x_tiles(m);
                let tiles = (fours + threes + twos + ones).max(1);
                let share = next_bytes.div_ceil(tiles).next_multiple_of(64);
                let mut row = 0;
                let mut t = 0;
                macro_rules! run {
                    ($count:expr, $rows:literal) => {
                        for _ in 0..$count {
                            let (from, bytes) = prefetch_share(next, next_bytes, share, t);
                            tile::<R, $rows>(
                                x.add(row * k),
                                w,
                                k,
                                out.add(row * ldo + c),
                                ldo,
                                from,
                                bytes,
                            );
                            row += $rows;
                            t += 1;
                        }
                    };
                }
                run!(fours, 4);
                run!(threes, 3);
                run!(twos, 2);
                run!(ones, 1);
                debug_assert_eq!(row, m);
            }
        }

        /// Tile `t`'s part of the next block: `share` bytes from `t * share`, clipped.
        #[inline(always)]
        fn prefetch_share(
            next: *const $t,
            total: usize,
            share: usize,
            t: usize,
        ) -> (*const $t, usize) {
            let start = (t * share).min(total);
            (
                (next as *const u8).wrapping_add(start) as *const $t,
                share.min(total - start),
            )
        }

        /// # Safety
        /// AVX2/FMA/F16C present; `x` holds `m * k`, `w` `n * k` values, and `out` is
        /// writable at `i * ldo + j` for `i < m`, `j < n`.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            x: *const f32,
            w: *const $t,
            k: usize,
            m: usize,
            n: usize,
            out: *mut f32,
            ldo: usize,
        ) {
            let mut c = 0;
            // SAFETY: every tile stays inside the bounds the caller guarantees.
            unsafe {
                if m == 1 && k * size_of::<$t>() < SHORT_ROW_BYTES {
                    while c + TILE_W_SHORT_ROWS <= n {
                        column_block::<TILE_W_SHORT_ROWS>(x, w, k, m, out, n, ldo, c);
                        c += TILE_W_SHORT_ROWS;
                    }
                } else if m == 1 {
                    while c + $one_row_tile <= n {
                        column_block::<{ $one_row_tile }>(x, w, k, m, out, n, ldo, c);
                        c += $one_row_tile;
                    }
                } else {
                    while c + TILE_W <= n {
                        column_block::<TILE_W>(x, w, k, m, out, n, ldo, c);
                        c += TILE_W;
                    }
                }
                while c < n {
                    column_block::<1>(x, w, k, m, out, n, ldo, c);
                    c += 1;
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::{
        SHORT_ROW_BYTES, TILE_W, TILE_W_ONE_ROW_16BIT, TILE_W_ONE_ROW_F32, TILE_W_SHORT_ROWS,
        x_tiles,
    };
    use crate::elem::Elem;

    type V = __m256;
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> V {
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> V {
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn fmadd(a: V, b: V, c: V) -> V {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

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

    mod f32_weights {
        use super::*;
        rows_dot!(
            rows_dot_f32,
            f32,
            load_f32,
            TILE_W_ONE_ROW_F32,
            "avx2,fma,f16c"
        );
    }
    mod bf16_weights {
        use super::*;
        rows_dot!(
            rows_dot_bf16,
            bf16,
            load_bf16,
            TILE_W_ONE_ROW_16BIT,
            "avx2,fma,f16c"
        );
    }
    mod f16_weights {
        use super::*;
        rows_dot!(
            rows_dot_f16,
            f16,
            load_f16,
            TILE_W_ONE_ROW_16BIT,
            "avx2,fma,f16c"
        );
    }
    pub use bf16_weights::rows_dot_bf16;
    pub use f16_weights::rows_dot_f16;
    pub use f32_weights::rows_dot_f32;

    macro_rules! weighted_sum {
        ($name:ident, $t:ty, $load:ident) => {
            /// # Safety
            /// AVX2/FMA/F16C present; `v` holds `p.len() * out.len()` values; `out` is zero.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(p: &[f32], v: *const $t, out: &mut [f32]) {
                let d = out.len();
                let o = out.as_mut_ptr();
                unsafe {
                    /// Columns `[c, c + 8 * B)`: `B` vectors accumulated over every row.
                    #[inline(always)]
                    unsafe fn block<const B: usize>(
                        p: &[f32],
                        v: *const $t,
                        d: usize,
                        o: *mut f32,
                    ) {
                        unsafe {
                            let mut acc = [_mm256_setzero_ps(); B];
                            for (j, &pj) in p.iter().enumerate() {
                                let w = _mm256_set1_ps(pj);
                                let row = v.add(j * d);
                                for (b, a) in acc.iter_mut().enumerate() {
                                    *a = _mm256_fmadd_ps(w, $load(row.add(8 * b)), *a);
                                }
                            }
                            for (b, a) in acc.iter().enumerate() {
                                _mm256_storeu_ps(o.add(8 * b), *a);
                            }
                        }
                    }
                    let mut c = 0;
                    while c + 64 <= d {
                        block::<8>(p, v.add(c), d, o.add(c));
                        c += 64;
                    }
                    while c + 8 <= d {
                        block::<1>(p, v.add(c), d, o.add(c));
                        c += 8;
                    }
                    // The scalar tail, as `axpy` does it (a multiply and an add, not fused).
                    for (j, &pj) in p.iter().enumerate() {
                        for col in c..d {
                            *o.add(col) += pj * (*v.add(j * d + col)).to_f32();
                        }
                    }
                }
            }
        };
    }
    weighted_sum!(weighted_sum_f32, f32, load_f32);
    weighted_sum!(weighted_sum_bf16, bf16, load_bf16);
    weighted_sum!(weighted_sum_f16, f16, load_f16);

    /// # Safety
    /// AVX2/FMA present; `x` and `y` hold `n` values.
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

/// 16-bit weights on AVX-512: 16 lanes, so one input row can read its weight one row at a
/// time (see [`TILE_W_ONE_ROW_16BIT_AVX512`]); batched decode gained too (bf16, batch 8,
/// alternated runs: Qwen2-100M 670 -> 702 tok/s, SmolLM2-135M 358 -> 386). f32 weights
/// stay on [`avx2`]: on Zen 4, which splits 512-bit operations, the same change lost 5-9%
/// at batch 1 and 2-3% at batch 8. So with AVX-512 a bf16 operand no longer gives the bits
/// of its widened f32 copy (the summation order differs), only bf16 and f16 agree.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::{SHORT_ROW_BYTES, TILE_W, TILE_W_ONE_ROW_16BIT_AVX512, TILE_W_SHORT_ROWS, x_tiles};
    use crate::elem::Elem;

    type V = __m512;
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> V {
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> V {
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn fmadd(a: V, b: V, c: V) -> V {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn hsum(v: V) -> f32 {
        // A fixed sequence of adds (halves folded), as every tile uses.
        unsafe { _mm512_reduce_add_ps(v) }
    }

    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> V {
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        unsafe {
            let v = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
        }
    }

    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> V {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }

    mod bf16_weights {
        use super::*;
        rows_dot!(
            rows_dot_bf16,
            bf16,
            load_bf16,
            TILE_W_ONE_ROW_16BIT_AVX512,
            "avx512f,avx2,fma,f16c"
        );
    }
    mod f16_weights {
        use super::*;
        rows_dot!(
            rows_dot_f16,
            f16,
            load_f16,
            TILE_W_ONE_ROW_16BIT_AVX512,
            "avx512f,avx2,fma,f16c"
        );
    }
    pub use bf16_weights::rows_dot_bf16;
    pub use f16_weights::rows_dot_f16;
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    fn reference<T: Elem>(x: &[f32], w: &[T], k: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for xr in x.chunks_exact(k) {
            for wr in w.chunks_exact(k) {
                out.push(
                    xr.iter()
                        .zip(wr)
                        .map(|(a, b)| *a as f64 * b.to_f32() as f64)
                        .sum(),
                );
            }
        }
        out
    }

    fn check<T: Elem>(m: usize, n: usize, k: usize) {
        let x = data(m * k, 1);
        let w: Vec<T> = data(n * k, 2).into_iter().map(T::from_f32).collect();
        let mut out = vec![f32::NAN; m * n];
        rows_dot(&x, &w, k, &mut out);
        for (i, (got, want)) in out.iter().zip(reference(&x, &w, k)).enumerate() {
            assert!(
                (*got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "m={m} n={n} k={k} element {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn matches_a_wide_reference_for_every_shape_and_dtype() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 5, 7),
            (2, 9, 8),
            (3, 4, 13),
            (7, 6, 64),
            (16, 9, 67),
            // No input rows; and blocks that prefetch the next one (n >= 8, k past a group).
            (0, 8, 16),
            (1, 13, 130),
            (5, 12, 200),
            // Rows of >= 1 KiB in every dtype: one input row reads them one at a time (f32).
            (1, 9, 600),
        ] {
            check::<f32>(m, n, k);
            check::<bf16>(m, n, k);
            check::<f16>(m, n, k);
        }
    }

    #[test]
    fn column_chunks_are_whole_tiles_and_a_few_per_thread() {
        for (n, threads) in [(1, 2), (192, 2), (1024, 2), (49152, 8), (5, 1)] {
            let chunk = column_chunk(n, threads);
            assert_eq!(chunk % TILE_W, 0, "n={n}");
            assert_eq!(chunk % TILE_W_ONE_ROW_16BIT, 0, "n={n}");
            assert!(n.div_ceil(chunk) <= threads * 4, "n={n}: {chunk}");
        }
    }

    #[test]
    fn tiles_cover_every_row_count_without_lone_rows() {
        for m in 0..50 {
            let [fours, threes, twos, ones] = x_tiles(m);
            assert_eq!(4 * fours + 3 * threes + 2 * twos + ones, m, "m={m}");
            assert_eq!(ones, usize::from(m == 1), "m={m}");
            // At most one smaller tile of each size: the rows stay in big tiles.
            assert!(threes <= 1 && twos <= 1, "m={m}: {threes} x 3, {twos} x 2");
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_among_others() {
        // Every split into 4-, 3-, 2- and 1-row tiles (m = 1..=13), against weight rows
        // that fall in 3- and 4-wide tiles and in the remainder; depths of one 64-value
        // group and a step, of two groups, a step and a scalar tail, and rows long enough
        // (1200 bytes) that one input row reads them one at a time.
        for (m, k) in (1..=13).flat_map(|m| [(m, 72), (m, 141), (m, 300)]) {
            let n = 10;
            let x = data(m * k, 3);
            let w = data(n * k, 4);
            let mut all = vec![0f32; m * n];
            rows_dot(&x, &w, k, &mut all);
            same_bits_alone(&x, &w, k, &all);
        }
    }

    #[test]
    fn strided_output_fills_its_columns_and_nothing_else() {
        let (m, n, k, ldo, at) = (5, 7, 37, 20, 3);
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let mut want = vec![0f32; m * n];
        rows_dot(&x, &w, k, &mut want);
        let mut wide = vec![f32::NAN; m * ldo];
        // SAFETY: rows 0..m of columns at..at + n lie inside `wide` (at + n <= ldo).
        unsafe { rows_dot_strided(&x, &w, k, wide.as_mut_ptr().add(at), ldo) };
        for i in 0..m {
            for j in 0..ldo {
                let got = wide[i * ldo + j];
                if (at..at + n).contains(&j) {
                    assert_eq!(got.to_bits(), want[i * n + j - at].to_bits(), "({i}, {j})");
                } else {
                    assert!(got.is_nan(), "({i}, {j}) written");
                }
            }
        }
    }

    fn same_bits_alone(x: &[f32], w: &[f32], k: usize, all: &[f32]) {
        let (m, n) = (x.len() / k, w.len() / k);
        for i in 0..m {
            let mut alone = vec![0f32; n];
            rows_dot(&x[i * k..(i + 1) * k], w, k, &mut alone);
            assert_eq!(&all[i * n..(i + 1) * n], &alone[..], "m={m} row {i}");
            // And a single weight row: the same bits as in the wider tiles.
            for j in 0..n {
                assert_eq!(
                    dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]),
                    alone[j]
                );
            }
        }
    }

    #[test]
    fn attend_is_softmax_weighted_values() {
        // 5 keys: the scalar tail only; 21: two 8-lane blocks and a tail.
        for keys in [5, 21] {
            let d = 16;
            let q = data(d, 5);
            let k = data(keys * d, 6);
            let v = data(keys * d, 7);
            let scale = 0.25;
            let logits: Vec<f64> = k
                .chunks_exact(d)
                .map(|kr| scale as f64 * q.iter().zip(kr).map(|(a, b)| (a * b) as f64).sum::<f64>())
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let z: f64 = e.iter().sum();
            let mut out = vec![f32::NAN; d];
            attend(&q, &k, &v, scale, &mut Vec::new(), &mut out);
            for (c, got) in out.iter().enumerate() {
                let want: f64 = (0..keys).map(|j| e[j] / z * v[j * d + c] as f64).sum();
                assert!(
                    (*got as f64 - want).abs() < 1e-5,
                    "{keys} keys, {c}: {got} vs {want}"
                );
            }
        }
        let mut out = vec![f32::NAN; 16];
        attend::<f32>(&data(16, 5), &[], &[], 0.25, &mut Vec::new(), &mut out);
        assert!(out.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn weighted_sum_gives_the_bits_of_one_axpy_per_row() {
        // Widths with 64-value blocks, 8-value blocks and a scalar tail.
        for (rows, d) in [(1, 8), (5, 64), (37, 128), (9, 83), (3, 5)] {
            let p = data(rows, 8);
            let v = data(rows * d, 9);
            let mut want = vec![0f32; d];
            for (pj, vr) in p.iter().zip(v.chunks_exact(d)) {
                axpy(*pj, vr, &mut want);
            }
            let mut got = vec![f32::NAN; d];
            weighted_sum(&p, &v, &mut got);
            assert_eq!(got, want, "{rows} rows of {d}");
        }
    }

    fn widen<T: Elem>(xs: &[T]) -> Vec<f32> {
        xs.iter().map(|x| x.to_f32()).collect()
    }

    #[test]
    fn attention_over_a_bf16_or_f16_cache_equals_it_over_the_widened_values() {
        // 64- and 8-value blocks and a scalar tail; widening is exact, so bf16 and f16
        // caches of the same values give the same bits, and, where f32 runs at the same
        // vector width (not on AVX-512: see `avx512`), those of the widened f32 cache.
        #[cfg(target_arch = "x86_64")]
        let same_width_as_f32 = isa::active() < Isa::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        let same_width_as_f32 = true;
        for (keys, d) in [(7, 64), (21, 83)] {
            let (q, k, v) = (data(d, 11), data(keys * d, 12), data(keys * d, 13));
            let (kb, vb): (Vec<bf16>, Vec<bf16>) = (bf16::from_f32_vec(k), bf16::from_f32_vec(v));
            let (kh, vh): (Vec<f16>, Vec<f16>) = (
                kb.iter().map(|x| f16::from_f32(x.to_f32())).collect(),
                vb.iter().map(|x| f16::from_f32(x.to_f32())).collect(),
            );
            let mut want = vec![0f32; d];
            attend(
                &q,
                &widen(&kb),
                &widen(&vb),
                0.125,
                &mut Vec::new(),
                &mut want,
            );
            let mut got = vec![f32::NAN; d];
            attend(&q, &kb, &vb, 0.125, &mut Vec::new(), &mut got);
            close_or_equal(&got, &want, same_width_as_f32, "bf16", keys, d);
            let mut got_f16 = vec![f32::NAN; d];
            attend(&q, &kh, &vh, 0.125, &mut Vec::new(), &mut got_f16);
            assert_eq!(got_f16, got, "f16 vs bf16, {keys} keys of {d}");
        }
    }

    /// Bit-equal where `exact`, else within f32 summation-order noise.
    fn close_or_equal(got: &[f32], want: &[f32], exact: bool, what: &str, keys: usize, d: usize) {
        if exact {
            assert_eq!(got, want, "{what}, {keys} keys of {d}");
            return;
        }
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}, {keys} keys of {d}: {g} vs {w}"
            );
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
