//! The 12 x 32 AVX-512 tiles (f32 FMA and bf16 pair dot products) in inline assembly.
//!
//! Written in Rust, the tile that reads A's rows in place turned its twelve row pointers
//! into twelve induction variables: with the B pointer, the counter and the accumulators
//! that is more than x86's sixteen general registers, and LLVM spilled two of them and
//! shuffled the rest through ~17 register moves every depth step (24 multiply-adds). Here
//! four base pointers (rows 0, 3, 6, 9) reach the other rows through `lda` and `2 lda` in
//! the address. Written out, the loop also carries the two prefetches below, which are
//! what made the difference on an Intel Xeon (2 cores, 48 KiB L1, 2 MiB L2): with them
//! the f32 products at the ~100M Qwen2's layer shapes went from ~285 to ~300 GFLOP/s best
//! of runs (`KC` 1024 with them, see `kernels::Avx512`), against ~330 for PyTorch's MKL.

/// Bytes ahead of the B pointer that each depth step prefetches into L1 (16 steps of
/// 128 bytes): a `KC` = 1024 panel of B is 128 KiB, read from L2 for every tile.
macro_rules! prefetch_b {
    () => {
        "prefetcht0 byte ptr [{b} + 2048]\nprefetcht0 byte ptr [{b} + 2112]\n"
    };
}

/// Depth steps before the end of a tile at which its 12 x 32 block of C is prefetched into
/// L1: C is read (and written) after the tile's products, and lines fetched at the start
/// of a 1024-step tile are evicted again by the 170 KiB of panels streamed meanwhile.
const C_PREFETCH_STEPS: usize = 24;

/// One row of a depth step: the row's 32-bit A element at `$addr`, broadcast into
/// `zmm$bc`, multiplied by `$fma` into accumulators `$c0` (columns 0-15) and `$c1` (16-31).
// Kept one instruction to a line (rustfmt would put each piece of the strings on its own).
#[rustfmt::skip]
macro_rules! row_12x32 {
    ($fma:literal, $addr:literal, $bc:literal, $c0:literal, $c1:literal) => {
        concat!(
            "vbroadcastss zmm", $bc, ", dword ptr ", $addr, "\n",
            $fma, " zmm", $c0, ", zmm", $bc, ", zmm24\n",
            $fma, " zmm", $c1, ", zmm", $bc, ", zmm25\n",
        )
    };
}

/// One depth step: B's two vectors, then rows 0-11 with A's elements at `$addr`s (the
/// broadcasts rotate through six registers so consecutive rows do not wait on one
/// another); then `$advance` moves A on and `$b_advance` B.
macro_rules! step_12x32 {
    ($fma:literal, $advance:literal, $b_advance:literal, [$a0:literal, $a1:literal,
     $a2:literal, $a3:literal, $a4:literal, $a5:literal, $a6:literal, $a7:literal,
     $a8:literal, $a9:literal, $a10:literal, $a11:literal $(,)?]) => {
        concat!(
            "vmovups zmm24, zmmword ptr [{b}]\n",
            "vmovups zmm25, zmmword ptr [{b} + 64]\n",
            prefetch_b!(),
            row_12x32!($fma, $a0, 26, 0, 1),
            row_12x32!($fma, $a1, 27, 2, 3),
            row_12x32!($fma, $a2, 28, 4, 5),
            row_12x32!($fma, $a3, 29, 6, 7),
            row_12x32!($fma, $a4, 30, 8, 9),
            row_12x32!($fma, $a5, 31, 10, 11),
            row_12x32!($fma, $a6, 26, 12, 13),
            row_12x32!($fma, $a7, 27, 14, 15),
            row_12x32!($fma, $a8, 28, 16, 17),
            row_12x32!($fma, $a9, 29, 18, 19),
            row_12x32!($fma, $a10, 30, 20, 21),
            row_12x32!($fma, $a11, 31, 22, 23),
            $advance,
            $b_advance,
        )
    };
}

/// A step reading A's rows in place: row `3 g + j` at `a{3g} + j * lda` (and B moved on by
/// `$b_advance`, 128 bytes by default).
macro_rules! step_direct {
    ($fma:literal) => {
        step_direct!($fma, "add {b}, 128\n")
    };
    ($fma:literal, $b_advance:literal) => {
        step_12x32!(
            $fma,
            "add {a0}, 4\nadd {a3}, 4\nadd {a6}, 4\nadd {a9}, 4\n",
            $b_advance,
            [
                "[{a0}]",
                "[{a0} + {lda}]",
                "[{a0} + {lda}*2]",
                "[{a3}]",
                "[{a3} + {lda}]",
                "[{a3} + {lda}*2]",
                "[{a6}]",
                "[{a6} + {lda}]",
                "[{a6} + {lda}*2]",
                "[{a9}]",
                "[{a9} + {lda}]",
                "[{a9} + {lda}*2]",
            ]
        )
    };
}

/// A step reading A's packed panel: the step's 12 elements are consecutive (A moved on by
/// `$a_advance`, 48 bytes by default, and B by `$b_advance`).
macro_rules! step_packed {
    ($fma:literal) => {
        step_packed!($fma, "add {a0}, 48\n", "add {b}, 128\n")
    };
    ($fma:literal, $a_advance:literal, $b_advance:literal) => {
        step_12x32!(
            $fma,
            $a_advance,
            $b_advance,
            [
                "[{a0}]",
                "[{a0} + 4]",
                "[{a0} + 8]",
                "[{a0} + 12]",
                "[{a0} + 16]",
                "[{a0} + 20]",
                "[{a0} + 24]",
                "[{a0} + 28]",
                "[{a0} + 32]",
                "[{a0} + 36]",
                "[{a0} + 40]",
                "[{a0} + 44]",
            ]
        )
    };
}

/// The whole tile: zero the 24 accumulators, run `{n} - {tail}` steps, prefetch C's 12
/// rows (two lines each), run the last `{tail}` steps, store the accumulators to `{acc}`.
macro_rules! tile_12x32 {
    ($step:expr) => {
        concat!(
            ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\n",
            "vpxord zmm\\i, zmm\\i, zmm\\i\n",
            ".endr\n",
            "mov {t}, {n}\n",
            "sub {t}, {tail}\n",
            "jz 3f\n",
            ".p2align 5\n",
            "2:\n",
            $step,
            "dec {t}\n",
            "jnz 2b\n",
            "3:\n",
            ".rept 12\n",
            "prefetcht0 byte ptr [{c}]\n",
            "prefetcht0 byte ptr [{c} + 64]\n",
            "add {c}, {ldc}\n",
            ".endr\n",
            "test {tail}, {tail}\n",
            "jz 5f\n",
            ".p2align 5\n",
            "4:\n",
            $step,
            "dec {tail}\n",
            "jnz 4b\n",
            "5:\n",
            ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\n",
            "vmovups zmmword ptr [{acc} + 64*\\i], zmm\\i\n",
            ".endr\n",
        )
    };
}

/// Runs a tile's assembly `$body` with the operands both kinds of tile share (B, the step
/// count, C and its row stride, the accumulators' destination), A's own operands
/// (`$a_operands`), and every zmm register clobbered.
macro_rules! tile_asm {
    ($body:expr, b = $b:expr, steps = $steps:expr, c = $c:expr, ldc_bytes = $ldc:expr,
     acc = $acc:expr, $($a_operands:tt)*) => {
        std::arch::asm!(
            $body,
            $($a_operands)*
            b = inout(reg) $b => _,
            n = in(reg) $steps,
            t = out(reg) _,
            tail = inout(reg) ($steps).min(C_PREFETCH_STEPS) => _,
            c = inout(reg) $c => _,
            ldc = in(reg) $ldc,
            acc = in(reg) $acc.as_mut_ptr(),
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            options(nostack),
        )
    };
}

/// Emits the two tiles of one multiply-add (`vfmadd231ps` for f32, `vdpbf16ps` for bf16
/// pairs: both read 32-bit A elements and 128 bytes of B a step):
/// `$direct(steps, a, lda_bytes, b, c, ldc_bytes, acc)` with A's row `i` at
/// `a + i * lda_bytes`, and `$packed(steps, a, b, c, ldc_bytes, acc)` with A packed (12
/// elements a step). `acc[2 i + h]` gets row `i`'s sums for columns `16 h..16 h + 16`; `c`
/// (the tile of C the caller will update, row stride `ldc_bytes`) is only prefetched.
macro_rules! tiles {
    ($direct:ident, $packed:ident, $features:literal, $fma:literal) => {
        /// # Safety
        /// The CPU has the features; rows `a + i * lda_bytes` (i < 12) hold `4 * steps`
        /// readable bytes; `b` holds `128 * steps` readable bytes.
        #[target_feature(enable = $features)]
        #[inline]
        pub(super) unsafe fn $direct(
            steps: usize,
            a: *const u8,
            lda_bytes: usize,
            b: *const u8,
            c: *const f32,
            ldc_bytes: usize,
            acc: &mut [std::arch::x86_64::__m512; 24],
        ) {
            // SAFETY: function contract; the assembly reads only the rows and the panel
            // described there (prefetches never fault) and writes only `acc`; no stack.
            unsafe {
                tile_asm!(
                    tile_12x32!(step_direct!($fma)),
                    b = b, steps = steps, c = c, ldc_bytes = ldc_bytes, acc = acc,
                    a0 = inout(reg) a => _,
                    a3 = inout(reg) a.add(3 * lda_bytes) => _,
                    a6 = inout(reg) a.add(6 * lda_bytes) => _,
                    a9 = inout(reg) a.add(9 * lda_bytes) => _,
                    lda = in(reg) lda_bytes,
                )
            }
        }

        /// # Safety
        /// The CPU has the features; `a` holds `48 * steps` readable bytes and `b`
        /// `128 * steps`.
        #[target_feature(enable = $features)]
        #[inline]
        pub(super) unsafe fn $packed(
            steps: usize,
            a: *const u8,
            b: *const u8,
            c: *const f32,
            ldc_bytes: usize,
            acc: &mut [std::arch::x86_64::__m512; 24],
        ) {
            // SAFETY: as above, for the packed panel.
            unsafe {
                tile_asm!(
                    tile_12x32!(step_packed!($fma)),
                    b = b, steps = steps, c = c, ldc_bytes = ldc_bytes, acc = acc,
                    a0 = inout(reg) a => _,
                )
            }
        }
    };
}

tiles!(f32_12x32_direct, f32_12x32_packed, "avx512f", "vfmadd231ps");
tiles!(
    bf16_12x32_direct,
    bf16_12x32_packed,
    "avx512f,avx512bf16",
    "vdpbf16ps"
);

/// A tile without C's prefetch (for small products whose C is in cache): zero the 24
/// accumulators, run `{n}` steps, store them to `{acc}`.
macro_rules! tile_12x32_small {
    ($step:expr) => {
        concat!(
            ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\n",
            "vpxord zmm\\i, zmm\\i, zmm\\i\n",
            ".endr\n",
            "test {n}, {n}\n",
            "jz 3f\n",
            ".p2align 5\n",
            "2:\n",
            $step,
            "dec {n}\n",
            "jnz 2b\n",
            "3:\n",
            ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23\n",
            "vmovups zmmword ptr [{acc} + 64*\\i], zmm\\i\n",
            ".endr\n",
        )
    };
}

/// Runs a small tile's assembly `$body` with its operands and every zmm register clobbered.
macro_rules! small_tile_asm {
    ($body:expr, $($operands:tt)*) => {
        std::arch::asm!(
            $body,
            $($operands)*
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            options(nostack),
        )
    };
}

/// The f32 tile of a small product read where its operands lie, without packing: step `p`
/// reads B's 32 values at `b + p * b_step_bytes` (a row-major B's row) and A's 12 values at
/// `a + p * a_step_bytes` (consecutive: a column of A read as a row of A^T, e.g. attention's
/// `P^T dO`). `acc[2 i + h]` gets row `i`'s sums for columns `16 h..16 h + 16`.
///
/// # Safety
/// AVX-512 F; for `p < steps`, 48 bytes at `a + p * a_step_bytes` and 128 at
/// `b + p * b_step_bytes` are readable.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn f32_12x32_strided(
    steps: usize,
    a: *const u8,
    a_step_bytes: usize,
    b: *const u8,
    b_step_bytes: usize,
    acc: &mut [std::arch::x86_64::__m512; 24],
) {
    // SAFETY: function contract; the assembly reads only those bytes (prefetches never
    // fault) and writes only `acc`; no stack.
    unsafe {
        small_tile_asm!(
            tile_12x32_small!(step_packed!(
                "vfmadd231ps",
                "add {a0}, {astep}\n",
                "add {b}, {bstep}\n"
            )),
            a0 = inout(reg) a => _,
            astep = in(reg) a_step_bytes,
            b = inout(reg) b => _,
            bstep = in(reg) b_step_bytes,
            n = inout(reg) steps => _,
            acc = in(reg) acc.as_mut_ptr(),
        )
    }
}

/// [`f32_12x32_strided`] with A's twelve rows read in place (row `i` at
/// `a + i * lda_bytes`, 4 bytes a step), as [`f32_12x32_direct`].
///
/// # Safety
/// AVX-512 F; rows `a + i * lda_bytes` (i < 12) hold `4 * steps` readable bytes; for
/// `p < steps`, 128 bytes at `b + p * b_step_bytes` are readable.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn f32_12x32_direct_strided_b(
    steps: usize,
    a: *const u8,
    lda_bytes: usize,
    b: *const u8,
    b_step_bytes: usize,
    acc: &mut [std::arch::x86_64::__m512; 24],
) {
    // SAFETY: as above.
    unsafe {
        small_tile_asm!(
            tile_12x32_small!(step_direct!("vfmadd231ps", "add {b}, {bstep}\n")),
            a0 = inout(reg) a => _,
            a3 = inout(reg) a.add(3 * lda_bytes) => _,
            a6 = inout(reg) a.add(6 * lda_bytes) => _,
            a9 = inout(reg) a.add(9 * lda_bytes) => _,
            lda = in(reg) lda_bytes,
            b = inout(reg) b => _,
            bstep = in(reg) b_step_bytes,
            n = inout(reg) steps => _,
            acc = in(reg) acc.as_mut_ptr(),
        )
    }
}
