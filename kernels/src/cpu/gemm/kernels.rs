//! Register-blocked microkernels: `C[MR x NR] = alpha * sum_p a[p] (x) b[p] + beta * C`
//! over packed panels, one per instruction set.

#[cfg(target_arch = "x86_64")]
use half::bf16;

use super::MatRef;
use super::driver::Packed;
#[cfg(any(target_arch = "x86_64", test))]
use super::pack::pack_bf16_pairs;
use super::pack::pack_f32;
use crate::elem::Elem;

/// The largest `MR * NR` of any kernel (size of the edge-tile temporary).
pub(super) const MAX_TILE: usize = 12 * 32;

pub(super) trait Microkernel {
    /// Rows of C per tile.
    const MR: usize;
    /// Columns of C per tile.
    const NR: usize;
    /// Depth granularity of the packed panels (2 for bf16 pairs).
    const KSTEP: usize;
    /// Rows of A packed at once (a multiple of MR; the packed block stays in L2).
    const MC: usize;
    /// Depth packed at once (one B micro-panel `KC x NR` stays in L1).
    const KC: usize;
    /// Columns of B packed at once (a multiple of NR).
    const NC: usize;
    type P: Packed;

    /// Packs `src` into panels of `width` rows (see `driver::pack_f32`).
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [Self::P]);

    /// One full tile over depth `kcp` (a multiple of KSTEP).
    ///
    /// # Safety
    /// `a`/`b` hold `kcp * MR` / `kcp * NR` packed elements; `c` is a writable `MR x NR`
    /// block with row stride `ldc`; the CPU has this kernel's instructions.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        kcp: usize,
        a: *const Self::P,
        b: *const Self::P,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    );

    /// Whether [`Microkernel::run_direct_a`] can read A's rows (`a`, of element type `T`)
    /// in place, so A need not be packed: A holds the packed element type itself.
    fn reads_a_in_place<T: Elem>(a: &[T]) -> bool {
        let _ = a;
        false
    }

    /// [`Microkernel::run`] with A read in place: row `i` of the tile starts at
    /// `a + min(i, rows - 1) * lda` (rows past `rows` repeat the last one; their results are
    /// the caller's to discard) and holds `kcp` elements.
    ///
    /// # Safety
    /// `reads_a_in_place` holds for A; the `rows` rows of `kcp` elements at `a` with stride
    /// `lda` are readable; otherwise as [`Microkernel::run`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_direct_a(
        kcp: usize,
        a: *const Self::P,
        lda: usize,
        rows: usize,
        b: *const Self::P,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        let _ = (kcp, a, lda, rows, b, c, ldc, alpha, beta);
        unreachable!("kernel without direct A");
    }

    /// Whether [`Microkernel::run_small`] exists (f32 operands read where they lie).
    const SMALL_IN_PLACE: bool = false;

    /// One full `MR x NR` tile of a small product read in place, without packing (see
    /// `driver::small_in_place`): depth step `p` reads B's `NR` values at `b + p * b_step`
    /// (a row-major B) and A's values as `a` says.
    ///
    /// # Safety
    /// `SMALL_IN_PLACE`; `kcp` steps of A (as `a` describes) and of B are readable; `c` is a
    /// writable `MR x NR` block with row stride `ldc`; the CPU has this kernel's instructions.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_small(
        kcp: usize,
        a: SmallA,
        b: *const f32,
        b_step: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        let _ = (kcp, a, b, b_step, c, ldc, alpha, beta);
        unreachable!("kernel without small in-place products");
    }
}

/// Where a small product's tile reads A (f32, in place).
// Only the x86 tiles read it; other targets have no small in-place products.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(super) enum SmallA {
    /// Row `i` of the tile at `a + min(i, rows - 1) * lda`, one element a step (rows past
    /// `rows` repeat the last; their results are the caller's to discard).
    Rows {
        a: *const f32,
        lda: usize,
        rows: usize,
    },
    /// Step `p`'s `MR` values consecutive at `a + p * step`: a block of A^T's rows (the
    /// transposed operand of attention's `P^T dO`), or a packed panel (`step` = `MR`).
    Steps { a: *const f32, step: usize },
}

/// Portable fallback; the compiler vectorises it for the baseline target (x86-64's SSE2;
/// on aarch64 [`Neon`] runs instead: this loop was not vectorised there).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub(super) struct Scalar;

impl Microkernel for Scalar {
    const MR: usize = 4;
    const NR: usize = 8;
    const KSTEP: usize = 1;
    const MC: usize = 128;
    const KC: usize = 256;
    const NC: usize = 2048;
    type P = f32;

    #[inline(always)]
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
        pack_f32(src, width, dst);
    }

    #[inline(always)]
    unsafe fn run(
        kcp: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        let mut acc = [[0f32; 8]; 4];
        // SAFETY: the packed panels hold kcp * 4 and kcp * 8 elements (trait contract).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kcp * 4),
                std::slice::from_raw_parts(b, kcp * 8),
            )
        };
        for (ap, bp) in a.chunks_exact(4).zip(b.chunks_exact(8)) {
            for i in 0..4 {
                for j in 0..8 {
                    acc[i][j] += ap[i] * bp[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: (i, j) inside the 4 x 8 block (trait contract).
                unsafe {
                    let dst = c.add(i * ldc + j);
                    *dst = if beta == 0.0 {
                        alpha * v
                    } else {
                        alpha * v + beta * *dst
                    };
                }
            }
        }
    }
}

/// NEON, which every aarch64 CPU has (Apple silicon, Graviton): 8 x 12 tile, 24 q-register
/// accumulators of 4 lanes (BLIS's ARMv8 shape). A step's 8 values of A are two registers
/// whose lanes the FMA broadcasts itself (`vfmaq_laneq_f32`), B's 12 are three. The
/// portable kernel was not vectorised on aarch64 (scalar multiplies and adds, the sums
/// kept in memory).
#[cfg(target_arch = "aarch64")]
pub(super) struct Neon;

#[cfg(target_arch = "aarch64")]
impl Microkernel for Neon {
    const MR: usize = 8;
    const NR: usize = 12;
    const KSTEP: usize = 1;
    const MC: usize = 128;
    const KC: usize = 256;
    const NC: usize = 1536;
    type P = f32;

    #[inline(always)]
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
        pack_f32(src, width, dst);
    }

    #[inline(always)]
    unsafe fn run(
        kcp: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (NEON is part of aarch64).
        unsafe { neon_8x12(kcp, a, b, c, ldc, alpha, beta) }
    }
}

/// `Microkernel::run`'s contract for an 8 x 12 tile.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn neon_8x12(
    kcp: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::aarch64::*;
    // Row `r` of the tile: its three accumulators += B's three vectors times lane `l` of
    // A's register `av` (rows 0-3 in the first register, 4-7 in the second).
    macro_rules! row {
        ($acc:ident, $r:literal, $av:ident, $l:literal, $b:ident) => {
            for v in 0..3 {
                $acc[$r][v] = vfmaq_laneq_f32::<$l>($acc[$r][v], $b[v], $av);
            }
        };
    }
    // SAFETY: the packed panels hold kcp * 8 and kcp * 12 elements and `c` is a writable
    // 8 x 12 block with row stride `ldc` (trait contract); NEON is part of aarch64.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 3]; 8];
        for p in 0..kcp {
            let ap = a.add(p * 8);
            let bp = b.add(p * 12);
            let (a0, a1) = (vld1q_f32(ap), vld1q_f32(ap.add(4)));
            let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8))];
            row!(acc, 0, a0, 0, bv);
            row!(acc, 1, a0, 1, bv);
            row!(acc, 2, a0, 2, bv);
            row!(acc, 3, a0, 3, bv);
            row!(acc, 4, a1, 0, bv);
            row!(acc, 5, a1, 1, bv);
            row!(acc, 6, a1, 2, bv);
            row!(acc, 7, a1, 3, bv);
        }
        // As the portable kernel: alpha * sum, plus beta * C only where beta is not 0 (C
        // may be uninitialised then).
        for (i, row) in acc.iter().enumerate() {
            for (v, &sum) in row.iter().enumerate() {
                let dst = c.add(i * ldc + 4 * v);
                let mut out = vmulq_n_f32(sum, alpha);
                if beta != 0.0 {
                    out = vaddq_f32(out, vmulq_n_f32(vld1q_f32(dst), beta));
                }
                vst1q_f32(dst, out);
            }
        }
    }
}

/// AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators (BLIS's Haswell shape).
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Microkernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    const KSTEP: usize = 1;
    // A 48 x 1024 block of A (192 KiB) stays in L2 (512 KiB a core on Zen 3), and the
    // layers' depth of 1024 is one block: C is finished in one pass (and a fused epilogue
    // works on a stack tile) instead of being read and written again per 256-deep block
    // (BLIS's Haswell blocking, 144 x 256, which this kernel had). B's 64 KiB panel is
    // read from L2. On a 2-core Zen 3, f32 LoRA training without checkpointing, three
    // interleaved rounds: 372-378 tok/s against 351-357.
    const MC: usize = 48;
    const KC: usize = 1024;
    const NC: usize = 3072;
    type P = f32;

    #[inline(always)]
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
        // SAFETY: this kernel only runs on CPUs with AVX2 and F16C (see `driver::run`).
        unsafe { super::pack::pack_f32_x86(src, width, dst) };
    }

    #[inline(always)]
    unsafe fn run(
        kcp: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (the CPU has AVX2 + FMA).
        unsafe { avx2_6x16(kcp, a, b, c, ldc, alpha, beta) }
    }
}

/// The AVX2 tile. A free function with its own target features so that the intrinsics
/// inline into it (they do not inline into a featureless trait method).
///
/// # Safety
/// `Microkernel::run`'s contract for a 6 x 16 tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_6x16(
    kcp: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: panels long enough, C block writable (caller).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 12];
        for p in 0..kcp {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            for i in 0..6 {
                let ai = _mm256_set1_ps(*a.add(p * 6 + i));
                acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
        let va = _mm256_set1_ps(alpha);
        let vb = _mm256_set1_ps(beta);
        for i in 0..6 {
            let row = c.add(i * ldc);
            let mut r0 = _mm256_mul_ps(acc[2 * i], va);
            let mut r1 = _mm256_mul_ps(acc[2 * i + 1], va);
            if beta != 0.0 {
                r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row), r0);
                r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row.add(8)), r1);
            }
            _mm256_storeu_ps(row, r0);
            _mm256_storeu_ps(row.add(8), r1);
        }
    }
}

/// AVX-512 F: 12 x 32 tile, 24 zmm accumulators.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Microkernel for Avx512 {
    const MR: usize = 12;
    const NR: usize = 32;
    const KSTEP: usize = 1;
    // A 96 x 1024 block of A (384 KiB) stays in L2 (1 MiB on Zen 4, 2 MiB on the Xeons).
    const MC: usize = 96;
    // Each depth block ends in a pass over C (read, add, write): 512 ran the f32 products
    // at depth 1024 ~8% faster than 256 on Zen 4, and 1024 (one pass at the layers'
    // depth; B's 128 KiB panel is read from L2, prefetched by the tile) ~5% faster than
    // 512 on an Intel Xeon, with the products at the ~100M Qwen2's shapes at ~300 GFLOP/s
    // on two cores, best of runs, from ~285.
    const KC: usize = 1024;
    // A 96 x 1536 block of C (576 KiB) stays in L2 while a row block runs through all its
    // depth blocks (`driver::blocked` with B packed ahead); 1536 x 1024 of packed B is
    // the per-thread scratch otherwise.
    const NC: usize = 1536;
    type P = f32;

    #[inline(always)]
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [f32]) {
        // SAFETY: this kernel only runs on CPUs with AVX2 and F16C (see `driver::run`).
        unsafe { super::pack::pack_f32_x86(src, width, dst) };
    }

    #[inline(always)]
    unsafe fn run(
        kcp: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (the CPU has AVX-512 F).
        unsafe { avx512_12x32(kcp, a, b, c, ldc, alpha, beta) }
    }

    fn reads_a_in_place<T: Elem>(a: &[T]) -> bool {
        matches!(T::typed(a), crate::elem::Typed::F32(_))
    }

    #[inline(always)]
    unsafe fn run_direct_a(
        kcp: usize,
        a: *const f32,
        lda: usize,
        rows: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (the CPU has AVX-512 F).
        unsafe { avx512_12x32_direct_a(kcp, a, lda, rows, b, c, ldc, alpha, beta) }
    }

    const SMALL_IN_PLACE: bool = true;

    #[inline(always)]
    unsafe fn run_small(
        kcp: usize,
        a: SmallA,
        b: *const f32,
        b_step: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (the CPU has AVX-512 F).
        unsafe { avx512_12x32_small(kcp, a, b, b_step, c, ldc, alpha, beta) }
    }
}

/// [`Microkernel::run_small`] of the AVX-512 tile.
///
/// # Safety
/// That method's contract for a 12 x 32 tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_12x32_small(
    kcp: usize,
    a: SmallA,
    b: *const f32,
    b_step: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 24];
    // SAFETY: the operands are readable for kcp steps as `a` and `b_step` say (caller); C
    // block writable.
    unsafe {
        match a {
            SmallA::Steps { a, step } => super::asm::f32_12x32_strided(
                kcp,
                a as *const u8,
                step * 4,
                b as *const u8,
                b_step * 4,
                &mut acc,
            ),
            SmallA::Rows { a, lda, rows: 12 } => super::asm::f32_12x32_direct_strided_b(
                kcp,
                a as *const u8,
                lda * 4,
                b as *const u8,
                b_step * 4,
                &mut acc,
            ),
            SmallA::Rows { a, lda, rows } => {
                edge_rows_12x32(kcp, (a, lda, rows), b, b_step, &mut acc)
            }
        }
        store_12x32(&acc, c, ldc, alpha, beta);
    }
}

/// The AVX-512 tile (see `avx2_6x16` for why it is a free function).
///
/// # Safety
/// `Microkernel::run`'s contract for a 12 x 32 tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_12x32(
    kcp: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: panels long enough, C block writable (caller).
    unsafe {
        prefetch_c_12x32(c, ldc);
        let mut acc = [_mm512_setzero_ps(); 24];
        let (a, b) = (a as *const u8, b as *const u8);
        super::asm::f32_12x32_packed(kcp, a, b, c, ldc * 4, &mut acc);
        store_12x32(&acc, c, ldc, alpha, beta);
    }
}

/// [`avx512_12x32`] reading A's rows in place: element `p` of row `i` is what the packed
/// panel would hold at `p * 12 + i`.
///
/// # Safety
/// `Microkernel::run_direct_a`'s contract for a 12 x 32 tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_12x32_direct_a(
    kcp: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: rows min(i, rows - 1) < rows are readable for kcp elements (caller); the B
    // panel holds kcp rows of 32 columns; C block writable.
    unsafe {
        prefetch_c_12x32(c, ldc);
        let mut acc = [_mm512_setzero_ps(); 24];
        if rows == 12 {
            let (a, b) = (a as *const u8, b as *const u8);
            super::asm::f32_12x32_direct(kcp, a, lda * 4, b, c, ldc * 4, &mut acc);
            store_12x32(&acc, c, ldc, alpha, beta);
            return;
        }
        edge_rows_12x32(kcp, (a, lda, rows), b, 32, &mut acc);
        store_12x32(&acc, c, ldc, alpha, beta);
    }
}

/// An edge tile's sums with A's rows read in place (`a`: first row, stride, rows; rows past
/// `rows` repeat the last one) and B's step `p` at `b + p * b_step`.
///
/// # Safety
/// AVX-512 F; the `rows` rows hold `kcp` readable elements, and 32 are readable at each
/// `b + p * b_step` (p < kcp).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn edge_rows_12x32(
    kcp: usize,
    (a, lda, rows): (*const f32, usize, usize),
    b: *const f32,
    b_step: usize,
    acc: &mut [std::arch::x86_64::__m512; 24],
) {
    use std::arch::x86_64::*;
    // SAFETY: function contract.
    unsafe {
        let r: [*const f32; 12] = std::array::from_fn(|i| a.add(i.min(rows - 1) * lda));
        for p in 0..kcp {
            let bp = b.add(p * b_step);
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
            for i in 0..12 {
                let ai = _mm512_set1_ps(*r[i].add(p));
                acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
}

/// Starts loading a 12 x 32 tile of C into L2 before the tile's products, which hide the
/// loads' latency: C is read (or, for its first depth block, written) only after thousands of
/// multiply-adds, and a large C is far out of cache by then. (Into L2, not L1: the panels
/// streamed through L1 during the tile would evict it again; the tile's assembly brings it
/// on into L1 shortly before its end.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch_c_12x32(c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    for i in 0..12 {
        let row = c.wrapping_add(i * ldc) as *const i8;
        // A prefetch reads nothing architecturally and never faults.
        _mm_prefetch::<_MM_HINT_T1>(row);
        _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(64));
    }
}

/// Writes 24 zmm accumulators to a 12 x 32 block of C as `alpha * acc + beta * C`.
///
/// # Safety
/// `c` is a writable 12 x 32 block with row stride `ldc`; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_12x32(
    acc: &[std::arch::x86_64::__m512; 24],
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: function contract.
    unsafe {
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        for i in 0..12 {
            let row = c.add(i * ldc);
            let mut r0 = _mm512_mul_ps(acc[2 * i], va);
            let mut r1 = _mm512_mul_ps(acc[2 * i + 1], va);
            if beta != 0.0 {
                r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), r0);
                r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row.add(16)), r1);
            }
            _mm512_storeu_ps(row, r0);
            _mm512_storeu_ps(row.add(16), r1);
        }
    }
}

/// AVX-512 BF16: 12 x 32 tile on bf16 pairs with `vdpbf16ps` (two products per lane per
/// instruction, accumulated in f32): twice the f32 kernel's arithmetic per instruction and
/// half its packed-panel bandwidth.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512Bf16;

#[cfg(target_arch = "x86_64")]
impl Microkernel for Avx512Bf16 {
    const MR: usize = 12;
    const NR: usize = 32;
    const KSTEP: usize = 2;
    // A whole depth-1024 product in one block (one pass over C, see `Avx512`) and a
    // 96 x 1024 block of A (192 KiB) in L2: 200 -> 217 GFLOP/s a core on Zen 4 against 144
    // x 512, whose loop reached ~93% of the instruction's peak only with C in cache.
    const MC: usize = 96;
    const KC: usize = 1024;
    const NC: usize = 3072;
    type P = bf16;

    #[inline(always)]
    fn pack<T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [bf16]) {
        match T::as_bf16(src.data) {
            Some(data) => pack_bf16_pairs(src.with_data(data), width, dst),
            // `driver::run` only picks this kernel when both operands are bf16.
            None => unreachable!("bf16 kernel packed a non-bf16 operand"),
        }
    }

    #[inline(always)]
    unsafe fn run(
        kcp: usize,
        a: *const bf16,
        b: *const bf16,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract (the CPU has AVX-512 BF16).
        unsafe { avx512bf16_12x32(kcp, a, b, c, ldc, alpha, beta) }
    }

    fn reads_a_in_place<T: Elem>(a: &[T]) -> bool {
        T::as_bf16(a).is_some()
    }

    #[inline(always)]
    unsafe fn run_direct_a(
        kcp: usize,
        a: *const bf16,
        lda: usize,
        rows: usize,
        b: *const bf16,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: trait contract.
        unsafe { avx512bf16_12x32_direct_a(kcp, a, lda, rows, b, c, ldc, alpha, beta) }
    }
}

/// The AVX-512 BF16 tile (see `avx2_6x16` for why it is a free function).
///
/// # Safety
/// `Microkernel::run`'s contract for a 12 x 32 tile over bf16 pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn avx512bf16_12x32(
    kcp: usize,
    a: *const bf16,
    b: *const bf16,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: panels hold kcp/2 pairs of 12 rows / 32 columns, C block writable (caller).
    unsafe {
        prefetch_c_12x32(c, ldc);
        let mut acc = [_mm512_setzero_ps(); 24];
        let (a, b) = (a as *const u8, b as *const u8);
        super::asm::bf16_12x32_packed(kcp / 2, a, b, c, ldc * 4, &mut acc);
        store_12x32(&acc, c, ldc, alpha, beta);
    }
}

/// [`avx512bf16_12x32`] reading A's rows in place: the pair `p` of row `i` is the u32 at
/// element `2 p` of the row, exactly what the packed panel would hold. Packing A was a
/// transpose of every activation block before each product (~3% of a bf16 LoRA step).
///
/// # Safety
/// `Microkernel::run_direct_a`'s contract for a 12 x 32 tile; `kcp` is even.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512bf16_12x32_direct_a(
    kcp: usize,
    a: *const bf16,
    lda: usize,
    rows: usize,
    b: *const bf16,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: rows min(i, rows - 1) < rows are readable for kcp elements (caller); the B
    // panel holds kcp/2 pairs of 32 columns; C block writable. The transmutes reinterpret
    // 512-bit integer vectors as 32 bf16 lanes, which is what `vdpbf16ps` reads.
    unsafe {
        prefetch_c_12x32(c, ldc);
        let mut acc = [_mm512_setzero_ps(); 24];
        if rows == 12 {
            let (a, b) = (a as *const u8, b as *const u8);
            super::asm::bf16_12x32_direct(kcp / 2, a, lda * 2, b, c, ldc * 4, &mut acc);
            store_12x32(&acc, c, ldc, alpha, beta);
            return;
        }
        // An edge tile: rows past `rows` repeat the last one.
        let r: [*const u32; 12] =
            std::array::from_fn(|i| a.add(i.min(rows - 1) * lda) as *const u32);
        for p in 0..kcp / 2 {
            let b0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * 64) as *const __m512i));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * 64 + 32) as *const __m512i));
            for i in 0..12 {
                let pair = r[i].add(p).read_unaligned();
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], ai, b0);
                acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], ai, b1);
            }
        }
        store_12x32(&acc, c, ldc, alpha, beta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The AVX-512 BF16 tile's arithmetic in scalar code, reading the packed panels exactly
    /// as `avx512bf16_12x32` does (pair `p` of row `i` is the u32 at `p * 12 + i`; lane `j`
    /// of `b0`/`b1` is column `j`/`16 + j`). Checks the packing layout against the kernel's
    /// indexing on machines without the instructions.
    fn emulate_bf16_tile(kcp: usize, a: &[bf16], b: &[bf16]) -> Vec<f32> {
        let mut acc = vec![0f32; 12 * 32];
        for p in 0..kcp / 2 {
            for i in 0..12 {
                let (a0, a1) = (
                    a[(p * 12 + i) * 2].to_f32(),
                    a[(p * 12 + i) * 2 + 1].to_f32(),
                );
                for j in 0..32 {
                    let (b0, b1) = (b[p * 64 + 2 * j].to_f32(), b[p * 64 + 2 * j + 1].to_f32());
                    acc[i * 32 + j] += a0 * b0 + a1 * b1;
                }
            }
        }
        acc
    }

    #[test]
    fn bf16_pair_panels_feed_the_bf16_tile_correctly() {
        let (m, n, k): (usize, usize, usize) = (12, 32, 37);
        let a: Vec<bf16> = (0..m * k)
            .map(|i| bf16::from_f32((i as f32 * 0.1).cos()))
            .collect();
        let b: Vec<bf16> = (0..k * n)
            .map(|i| bf16::from_f32((i as f32 * 0.3).sin()))
            .collect();
        let kcp = k.next_multiple_of(2);
        let mut ap = vec![bf16::ZERO; m * kcp];
        let mut bp = vec![bf16::ZERO; n * kcp];
        pack_bf16_pairs(MatRef::row_major(&a, m, k), 12, &mut ap);
        // B is packed as rows of B^T, as the driver does.
        pack_bf16_pairs(MatRef::row_major(&b, k, n).t(), 32, &mut bp);
        let got = emulate_bf16_tile(kcp, &ap, &bp);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k)
                    .map(|p| a[i * k + p].to_f32() * b[p * n + j].to_f32())
                    .sum();
                assert!((got[i * 32 + j] - want).abs() < 1e-4, "({i}, {j})");
            }
        }
    }
}
