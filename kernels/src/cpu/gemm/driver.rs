//! The blocked loops around the microkernels: pack panels of A and B, walk C in tiles.

use std::cell::Cell;
use std::thread::LocalKey;

use half::bf16;

use super::MatRef;
use super::epilogue::{Epilogue, TileAt};
use super::kernels::{self, Microkernel, SmallA};
use crate::cpu::isa::Isa;
use crate::cpu::par::SendPtr;
use crate::elem::Elem;

/// One sequential product: `C = alpha * A B + beta * C` on a block of C.
#[derive(Clone, Copy)]
pub(super) struct Job<'a, TA, TB> {
    pub a: MatRef<'a, TA>,
    pub b: MatRef<'a, TB>,
    /// Top-left element of the C block, row stride `ldc`.
    pub c: SendPtr<f32>,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Where the block's top-left element sits in the whole C (for the epilogue).
    pub origin: (usize, usize),
    pub epilogue: Option<&'a Epilogue<'a>>,
}

/// Operands packed once, up front, for all tasks of a parallel product.
#[derive(Clone, Copy)]
pub(super) enum Prepacked<'a, P> {
    None,
    /// The whole of A (the job's A is the full matrix).
    A(&'a [P]),
    /// The whole of B (the job's B is the full matrix).
    B(&'a [P]),
}

/// Runs `job` with the best kernel for `isa` and the element types, on `threads` threads.
///
/// # Safety
/// `job.c` must point to a writable `a.rows x b.cols` block with row stride `ldc` that no
/// other thread touches during the call.
pub(super) unsafe fn run<TA: Elem, TB: Elem>(isa: Isa, job: &Job<'_, TA, TB>, threads: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512Bf16
            && let (Some(a), Some(b)) = (TA::as_bf16(job.a.data), TB::as_bf16(job.b.data))
        {
            let job = Job {
                a: job.a.with_data(a),
                b: job.b.with_data(b),
                c: job.c,
                ldc: job.ldc,
                alpha: job.alpha,
                beta: job.beta,
                origin: job.origin,
                epilogue: job.epilogue,
            };
            let entry = Entry::<kernels::Avx512Bf16, bf16, bf16> {
                blocked: avx512bf16::blocked,
                pack_a: avx512bf16::pack_rows,
                pack_b: avx512bf16::pack_rows,
            };
            // SAFETY: the CPU has AVX-512 BF16 (`isa` is capped at the detected level);
            // the caller's contract on C is passed on.
            unsafe { orchestrate(&entry, &job, threads) };
            return;
        }
        if isa >= Isa::Avx512 {
            let entry = Entry::<kernels::Avx512, TA, TB> {
                blocked: avx512::blocked,
                pack_a: avx512::pack_rows,
                pack_b: avx512::pack_rows,
            };
            // SAFETY: as above, for AVX-512 F.
            unsafe { orchestrate(&entry, job, threads) };
            return;
        }
        if isa >= Isa::Avx2 {
            let entry = Entry::<kernels::Avx2, TA, TB> {
                blocked: avx2::blocked,
                pack_a: avx2::pack_rows,
                pack_b: avx2::pack_rows,
            };
            // SAFETY: as above, for AVX2 + FMA.
            unsafe { orchestrate(&entry, job, threads) };
            return;
        }
    }
    let _ = isa;
    let entry = Entry::<Baseline, TA, TB> {
        blocked: baseline::blocked,
        pack_a: baseline::pack_rows,
        pack_b: baseline::pack_rows,
    };
    // SAFETY: the caller's contract on C is passed on.
    unsafe { orchestrate(&entry, job, threads) };
}

/// Packs `b` (`k x n`, bf16) for the AVX-512 BF16 kernel as [`run_prepacked_b`] reads it,
/// or `None` where that kernel is not the one `run` would pick for bf16 operands.
pub(super) fn pack_b_bf16(isa: Isa, b: MatRef<'_, bf16>) -> Option<Vec<bf16>> {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512Bf16 {
        type K = kernels::Avx512Bf16;
        let mut dst = vec![bf16::ZERO; packed_len::<K>(b.cols, b.rows, K::NR)];
        // SAFETY: the CPU has AVX-512 BF16 (`isa` is capped at the detected level by the
        // caller); `dst` holds `packed_len` elements for B^T.
        unsafe { pack_shared::<K, bf16>(avx512bf16::pack_rows, b.t(), K::NR, &mut dst) };
        return Some(dst);
    }
    let _ = (isa, b);
    None
}

/// Runs `job` whose B was packed by [`pack_b_bf16`] (`job.b` gives only its shape), on
/// `threads` threads split over the rows of C.
///
/// # Safety
/// Contract of [`run`]; `packed` came from [`pack_b_bf16`] for a matrix of `job.b`'s shape
/// on this CPU.
pub(super) unsafe fn run_prepacked_b(job: &Job<'_, bf16, bf16>, packed: &[bf16], threads: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        type K = kernels::Avx512Bf16;
        let m = job.a.rows;
        let k = job.a.cols;
        let pre = Prepacked::B(packed);
        if threads <= 1 || k == 0 {
            // SAFETY: contract of this function (the CPU has AVX-512 BF16: `packed` exists).
            unsafe { avx512bf16::blocked(job, pre) };
            return;
        }
        let spans = guided_spans(m, K::MR, threads);
        crate::cpu::par::for_each(spans.len(), |t| {
            let (start, size) = spans[t];
            let sub = Job {
                a: job.a.sub(start, size, 0, k),
                // SAFETY: row `start` < m lies inside C.
                c: SendPtr(unsafe { job.c.ptr().add(start * job.ldc) }),
                origin: (job.origin.0 + start, job.origin.1),
                ..*job
            };
            // SAFETY: tasks own disjoint row ranges of C; as above for the CPU.
            unsafe { avx512bf16::blocked(&sub, pre) };
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (job, packed, threads);
        unreachable!("no packed bf16 operands without the AVX-512 BF16 kernel");
    }
}

/// One instruction set's compiled loops (function pointers into `#[target_feature]` code).
struct Entry<K: Microkernel, TA, TB> {
    blocked: unsafe fn(&Job<'_, TA, TB>, Prepacked<'_, K::P>),
    pack_a: unsafe fn(MatRef<'_, TA>, usize, &mut [K::P]),
    pack_b: unsafe fn(MatRef<'_, TB>, usize, &mut [K::P]),
}

/// Stamps out the `#[target_feature]` entry points of one kernel.
macro_rules! isa_entry {
    ($name:ident, $kernel:ty) => {
        mod $name {
            use super::*;
            type P = <$kernel as Microkernel>::P;

            /// # Safety
            /// Contract of `driver::run`.
            pub(super) unsafe fn blocked<TA: Elem, TB: Elem>(
                job: &Job<'_, TA, TB>,
                pre: Prepacked<'_, P>,
            ) {
                // SAFETY: function contract.
                unsafe { super::blocked::<$kernel, TA, TB>(job, pre, finish) }
            }

            /// [`Epilogue::finish`], out of line.
            ///
            /// # Safety
            /// Contract of `Epilogue::finish`.
            #[inline(never)]
            unsafe fn finish(e: &Epilogue<'_>, at: TileAt) {
                // SAFETY: function contract.
                unsafe { e.finish(at) }
            }

            /// # Safety
            /// None (unsafe only to share the signature of the feature-gated versions).
            pub(super) unsafe fn pack_rows<T: Elem>(
                src: MatRef<'_, T>,
                width: usize,
                dst: &mut [P],
            ) {
                super::pack_rows::<$kernel, T>(src, width, dst)
            }
        }
    };
    ($name:ident, $features:literal, $kernel:ty, $epilogue:ident) => {
        mod $name {
            use super::*;
            type P = <$kernel as Microkernel>::P;

            /// # Safety
            /// The CPU has the features; contract of `driver::run`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn blocked<TA: Elem, TB: Elem>(
                job: &Job<'_, TA, TB>,
                pre: Prepacked<'_, P>,
            ) {
                // SAFETY: function contract.
                unsafe { super::blocked::<$kernel, TA, TB>(job, pre, finish) }
            }

            /// [`Epilogue::finish`] compiled for the kernel's instructions, out of line: inlined
            /// into the tile loop it kept the microkernel from being inlined there, which
            /// cost more than the epilogue saved.
            ///
            /// # Safety
            /// The CPU has the features; contract of `Epilogue::finish`.
            #[target_feature(enable = $features)]
            #[inline(never)]
            unsafe fn finish(e: &Epilogue<'_>, at: TileAt) {
                // SAFETY: function contract.
                unsafe { e.$epilogue(at) }
            }

            /// # Safety
            /// The CPU has the features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn pack_rows<T: Elem>(
                src: MatRef<'_, T>,
                width: usize,
                dst: &mut [P],
            ) {
                super::pack_rows::<$kernel, T>(src, width, dst)
            }
        }
    };
}

/// The kernel every CPU of the target has: NEON's on aarch64 (part of the target, so not a
/// level to detect), the portable loop elsewhere (below AVX2 on x86-64).
#[cfg(target_arch = "aarch64")]
use kernels::Neon as Baseline;
#[cfg(not(target_arch = "aarch64"))]
use kernels::Scalar as Baseline;
isa_entry!(baseline, Baseline);
#[cfg(target_arch = "x86_64")]
isa_entry!(avx2, "avx2,fma,f16c", kernels::Avx2, finish_avx2);
#[cfg(target_arch = "x86_64")]
isa_entry!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    kernels::Avx512,
    finish_avx512
);
#[cfg(target_arch = "x86_64")]
isa_entry!(
    avx512bf16,
    "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c",
    kernels::Avx512Bf16,
    finish_avx512
);

/// Largest operand (in elements) packed up front for sharing between tasks; larger
/// products fall back to a static split where each task packs its own blocks.
const SHARED_MAX: usize = 8 << 20;
/// Tasks per thread when packing a shared operand: enough for one slow thread not to hold
/// up the others.
const TASKS_PER_THREAD: usize = 4;
/// Smallest task of a product's guided split, in microkernel rows (columns).
const MIN_TASK_UNITS: usize = 2;

/// Task `t` of `tasks` over `len` items (`tasks` <= `len`), as `(start, size)`: the items
/// shared out evenly, so sizes differ by one at most (a shared operand's panels between
/// its packing tasks; products are cut by [`guided_spans`]).
fn even_span(t: usize, tasks: usize, len: usize) -> (usize, usize) {
    let (start, end) = (t * len / tasks, (t + 1) * len / tasks);
    (start, end - start)
}

/// A product's side of `len` items cut for `threads` threads taking tasks in order: whole
/// `unit`s, each task half a thread's share of what is left (`left / (2 x threads)`, at
/// least [`MIN_TASK_UNITS`]), so the tasks shrink towards the end and a thread that runs
/// out of work waits at most for a small task of the other.
///
/// Equal tasks (`4 x threads` of them) left the first thread done waiting for the other's
/// last task, up to an eighth of the product on two threads: the pool's barriers were 5.3-5.6%
/// of an f32 LoRA training step's samples on a 2-core Intel Xeon, 4.3-4.4% with this split,
/// and the products alone ran 1-2% faster.
fn guided_spans(len: usize, unit: usize, threads: usize) -> Vec<(usize, usize)> {
    let units = len.div_ceil(unit);
    let mut spans = Vec::new();
    let mut done = 0;
    while done < units {
        let left = units - done;
        let take = left.div_ceil(2 * threads).max(MIN_TASK_UNITS).min(left);
        let start = done * unit;
        spans.push((start, ((done + take) * unit).min(len) - start));
        done += take;
    }
    spans
}

/// Splits the product over threads. The longer side of C is cut into [`guided_spans`]
/// taken dynamically in order; the operand every task needs whole (A when cutting columns,
/// B when cutting rows) is packed once up front instead of once per task.
///
/// # Safety
/// Contract of [`run`]; the CPU has `K`'s instructions.
unsafe fn orchestrate<K: Microkernel, TA: Elem, TB: Elem>(
    e: &Entry<K, TA, TB>,
    job: &Job<'_, TA, TB>,
    threads: usize,
) {
    let (m, k, n) = (job.a.rows, job.a.cols, job.b.cols);
    if threads <= 1 || k == 0 {
        // SAFETY: contract of `run`.
        unsafe { (e.blocked)(job, Prepacked::None) };
        return;
    }
    let split_n = n.div_ceil(K::NR) >= m.div_ceil(K::MR);
    let (len, unit) = if split_n { (n, K::NR) } else { (m, K::MR) };
    let spans = guided_spans(len, unit, threads);
    let shared_len = if split_n {
        packed_len::<K>(m, k, K::MR)
    } else {
        packed_len::<K>(n, k, K::NR)
    };
    let run_task = |t: usize, pre: Prepacked<'_, K::P>| {
        let (start, size) = spans[t];
        let sub = if split_n {
            Job {
                b: job.b.sub(0, k, start, size),
                // SAFETY: column `start` < n lies inside C's rows.
                c: SendPtr(unsafe { job.c.ptr().add(start) }),
                origin: (job.origin.0, job.origin.1 + start),
                ..*job
            }
        } else {
            Job {
                a: job.a.sub(start, size, 0, k),
                // SAFETY: row `start` < m lies inside C.
                c: SendPtr(unsafe { job.c.ptr().add(start * job.ldc) }),
                origin: (job.origin.0 + start, job.origin.1),
                ..*job
            }
        };
        // SAFETY: tasks own disjoint column (row) ranges of C; the CPU has K's features.
        unsafe { (e.blocked)(&sub, pre) };
    };
    // A that the kernel reads in place needs no shared packing either.
    if shared_len > SHARED_MAX || (split_n && reads_a_in_place::<K, TA>(&job.a, k)) {
        crate::cpu::par::for_each(spans.len(), |t| run_task(t, Prepacked::None));
        return;
    }
    let mut shared = Buffer::take(K::P::shared(), shared_len);
    let shared = &mut shared[..];
    // SAFETY: the CPU has K's features (caller).
    unsafe {
        if split_n {
            pack_shared::<K, TA>(e.pack_a, job.a, K::MR, shared);
        } else {
            pack_shared::<K, TB>(e.pack_b, job.b.t(), K::NR, shared);
        }
    }
    let shared: &[K::P] = shared;
    let pre = if split_n {
        Prepacked::A(shared)
    } else {
        Prepacked::B(shared)
    };
    crate::cpu::par::for_each(spans.len(), |t| run_task(t, pre));
}

/// Packs the operand every task shares ([`pack_rows`]'s layout) on all threads, in tasks of
/// one `KC` depth block by a run of whole panels, so the other threads do not wait while
/// one thread packs a whole weight. (Depth blocks alone are too few: at `KC` = 1024 a
/// weight of depth 1024 was one task, packed on one thread while the others spun, ~2% of
/// a bf16 LoRA step.)
///
/// # Safety
/// The CPU has `K`'s features; `dst` holds [`packed_len`] elements for `src`.
unsafe fn pack_shared<K: Microkernel, T: Elem>(
    pack: unsafe fn(MatRef<'_, T>, usize, &mut [K::P]),
    src: MatRef<'_, T>,
    width: usize,
    dst: &mut [K::P],
) {
    let (rows, depth) = (src.rows, src.cols);
    let panels = rows.div_ceil(width);
    let blocks = depth.div_ceil(K::KC);
    let threads = crate::cpu::par::threads();
    let groups = (threads * TASKS_PER_THREAD)
        .div_ceil(blocks)
        .min(panels)
        .max(1);
    let block_len = panels * width * K::KC;
    let base = SendPtr(dst.as_mut_ptr());
    crate::cpu::par::for_each(blocks * groups, |task| {
        let (i, g) = (task / groups, task % groups);
        let pc = i * K::KC;
        let kcb = K::KC.min(depth - pc);
        let kcp = kcb.next_multiple_of(K::KSTEP);
        let (first, count) = even_span(g, groups, panels);
        let r0 = first * width;
        // Blocks before `pc` are all full, so this one starts at i * block_len; its panels
        // follow one another, `width * kcp` elements each.
        let start = i * block_len + r0 * kcp;
        let len = count * width * kcp;
        // SAFETY: the (block, panel run) ranges [start, start + len) are disjoint for
        // distinct tasks and lie inside `dst` (`packed_len` elements), which is borrowed
        // mutably for the whole call; the CPU has K's features.
        unsafe {
            let run = std::slice::from_raw_parts_mut(base.ptr().add(start), len);
            pack(
                src.sub(r0, rows.min(r0 + count * width) - r0, pc, kcb),
                width,
                run,
            );
        }
    });
}

/// Elements of `rows x depth` packed in panels of `width` rows, one `KC` depth block after
/// another (the layout [`pack_rows`] writes and [`blocked`] reads).
fn packed_len<K: Microkernel>(rows: usize, depth: usize, width: usize) -> usize {
    let full = depth / K::KC * K::KC;
    let tail = (depth - full).next_multiple_of(K::KSTEP);
    rows.div_ceil(width) * width * (full + tail)
}

/// Packs all of `src` (`rows x depth`): for each `KC` block of depth, the panels of
/// `width` rows.
#[inline(always)]
fn pack_rows<K: Microkernel, T: Elem>(src: MatRef<'_, T>, width: usize, dst: &mut [K::P]) {
    let (rows, depth) = (src.rows, src.cols);
    let panels = rows.div_ceil(width);
    let mut offset = 0;
    for pc in (0..depth).step_by(K::KC) {
        let kcb = K::KC.min(depth - pc);
        let kcp = kcb.next_multiple_of(K::KSTEP);
        K::pack::<T>(
            src.sub(0, rows, pc, kcb),
            width,
            &mut dst[offset..offset + panels * width * kcp],
        );
        offset += panels * width * kcp;
    }
}

thread_local! {
    static SCRATCH_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCRATCH_BF16: Cell<Vec<bf16>> = const { Cell::new(Vec::new()) };
    static SHARED_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SHARED_BF16: Cell<Vec<bf16>> = const { Cell::new(Vec::new()) };
}

/// Packed-element types, each with per-thread reusable packing buffers (they are MBs;
/// allocating them per product costs page faults every time).
pub(super) trait Packed: Copy + Default + Send + Sync + 'static {
    /// The thread's buffer for one task's A and B blocks.
    fn scratch() -> &'static LocalKey<Cell<Vec<Self>>>;
    /// The thread's buffer for an operand shared by all tasks of a product.
    fn shared() -> &'static LocalKey<Cell<Vec<Self>>>;
}

impl Packed for f32 {
    fn scratch() -> &'static LocalKey<Cell<Vec<f32>>> {
        &SCRATCH_F32
    }
    fn shared() -> &'static LocalKey<Cell<Vec<f32>>> {
        &SHARED_F32
    }
}

impl Packed for bf16 {
    fn scratch() -> &'static LocalKey<Cell<Vec<bf16>>> {
        &SCRATCH_BF16
    }
    fn shared() -> &'static LocalKey<Cell<Vec<bf16>>> {
        &SHARED_BF16
    }
}

/// A buffer borrowed from a thread-local cache and returned on drop. (A guard rather than
/// a closure: closures do not inherit `#[target_feature]`, and the loops using the buffer
/// must be compiled with the kernel's features.) A nested borrow finds the cache empty and
/// allocates. The usable part starts on a 64-byte boundary, so the microkernels' vector
/// loads of packed panels never straddle cache lines.
pub(super) struct Buffer<P: Packed> {
    data: Vec<P>,
    start: usize,
    len: usize,
    home: &'static LocalKey<Cell<Vec<P>>>,
}

impl<P: Packed> Buffer<P> {
    #[inline(always)]
    pub(super) fn take(home: &'static LocalKey<Cell<Vec<P>>>, len: usize) -> Self {
        let mut data = home.with(Cell::take);
        let slack = 64 / std::mem::size_of::<P>();
        if data.len() < len + slack {
            data.resize(len + slack, P::default());
        }
        let misalign = (data.as_ptr() as usize) % 64;
        let start = if misalign == 0 {
            0
        } else {
            (64 - misalign) / std::mem::size_of::<P>()
        };
        Buffer {
            data,
            start,
            len,
            home,
        }
    }
}

impl<P: Packed> std::ops::Deref for Buffer<P> {
    type Target = [P];
    fn deref(&self) -> &[P] {
        &self.data[self.start..self.start + self.len]
    }
}

impl<P: Packed> std::ops::DerefMut for Buffer<P> {
    fn deref_mut(&mut self) -> &mut [P] {
        &mut self.data[self.start..self.start + self.len]
    }
}

impl<P: Packed> Drop for Buffer<P> {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        self.home.with(|cell| cell.set(data));
    }
}

/// The BLIS loop nest: for each `NC` block of columns and `KC` slice of depth, pack B once;
/// for each `MC` block of rows pack A; run the microkernel on every `MR x NR` tile. A
/// pre-packed operand (see [`pack_rows`]) is read in place instead of packed.
///
/// # Safety
/// Contract of [`run`]; additionally the CPU must support `K`'s instructions, and a
/// pre-packed operand must be the packing of the job's whole A (or B).
#[inline(always)]
unsafe fn blocked<K: Microkernel, TA: Elem, TB: Elem>(
    job: &Job<'_, TA, TB>,
    pre: Prepacked<'_, K::P>,
    finish: unsafe fn(&Epilogue<'_>, TileAt),
) {
    let (m, k, n) = (job.a.rows, job.a.cols, job.b.cols);
    if k == 0 {
        // SAFETY: contract of `run` (C block is ours, and so is its part of the output).
        unsafe {
            scale_c(job, m, n);
            if let Some(e) = job.epilogue {
                let (row, col) = job.origin;
                let (c, ldc) = (job.c.0, job.ldc);
                finish(
                    e,
                    TileAt {
                        row,
                        col,
                        rows: m,
                        cols: n,
                        c,
                        ldc,
                        dst: c,
                        ldd: ldc,
                    },
                );
            }
        }
        return;
    }
    if K::SMALL_IN_PLACE
        && matches!(pre, Prepacked::None)
        && job.epilogue.is_none()
        && let Some(small) = SmallProduct::of::<K, TA, TB>(job)
    {
        // SAFETY: contract of this function; `of` checked the operands' reach.
        unsafe { small_in_place::<K, TA, TB>(job, &small) };
        return;
    }
    let (mc, kc, nc) = (K::MC, K::KC, K::NC);
    let kcp_max = kc.min(k).next_multiple_of(K::KSTEP);
    let mc_max = mc.min(m.next_multiple_of(K::MR));
    let nc_max = nc.min(n.next_multiple_of(K::NR));
    let (a_panels, b_panels) = (m.div_ceil(K::MR), n.div_ceil(K::NR));
    // A's rows are read in place by the kernel, or (at a stride that aliases in L1) copied
    // block by block to `copy_stride` and read there, or packed into panels.
    let in_place = !matches!(pre, Prepacked::A(_)) && kernel_reads_rows_of::<K, TA>(&job.a, k);
    let direct_a = in_place && reads_a_in_place::<K, TA>(&job.a, k);
    // Room for A's block packed, or copied at `copy_stride`.
    let a_block = mc_max * copy_stride::<K::P>(kcp_max);
    let (len_a, len_b) = match pre {
        Prepacked::None => (a_block, nc_max * kcp_max),
        Prepacked::A(_) => (0, nc_max * kcp_max),
        Prepacked::B(_) => (a_block, 0),
    };
    let len_a = if direct_a { 0 } else { len_a };
    // B's part starts on a cache line too.
    let len_a = len_a.next_multiple_of(64 / std::mem::size_of::<K::P>());
    let mut scratch = Buffer::take(K::P::scratch(), len_a + len_b);
    let (abuf, bbuf) = scratch.split_at_mut(len_a);
    // An epilogue over a single depth block: each tile's sums go to a stack tile, and the
    // epilogue reads them there and writes the finished values to the output once. Rounded,
    // C is never written (nor its memory touched); unrounded, C's block is written once
    // instead of stored, reloaded and stored again: C's rows are often 4 KiB apart (f32 at
    // 1024 columns), where the tile's 24 lines share one L1 set and the epilogue's reloads
    // missed (~a third of the f32 LoRA epilogue's samples were those loads).
    let on_stack = job.epilogue.is_some() && job.beta == 0.0 && k <= kc;
    // Uninitialised: every product of a small attention tile comes through here, and
    // zeroing the tile each time was ~0.9% of a bf16 LoRA step (the kernel writes the
    // whole tile, or `run_tile`'s own temporary's corner, before the epilogue reads it).
    let mut stack_tile = std::mem::MaybeUninit::<[f32; kernels::MAX_TILE]>::uninit();
    let mut cx = BlockCx {
        job,
        pre,
        finish,
        abuf,
        in_place,
        direct_a,
        a_panels,
        stack_tile: on_stack.then_some(stack_tile.as_mut_ptr().cast::<f32>()),
        a_block_of: None,
    };
    let block_at = |ic: usize, pc: usize, jc: usize| {
        let kcb = kc.min(k - pc);
        BlockAt {
            ic,
            mcb: mc.min(m - ic),
            pc,
            kcb,
            kcp: kcb.next_multiple_of(K::KSTEP),
            jc,
            ncb: nc.min(n - jc),
        }
    };
    if let Prepacked::B(all) = pre
        && k <= kc
    {
        // B is packed already and the depth is one block: each row block of A is prepared
        // (copied or packed) once and run against every column block. With column blocks
        // outside, a product wider than NC (a gate/up projection's 2816 columns) prepared
        // each of A's blocks once per column block: half of the f32 copies of A's rows.
        for ic in (0..m).step_by(mc) {
            for jc in (0..n).step_by(nc) {
                let at = block_at(ic, 0, jc);
                let bblock = &all[(jc / K::NR) * at.kcp * K::NR..];
                // SAFETY: contract of this function.
                unsafe { row_block::<K, TA, TB>(&mut cx, &at, bblock) };
            }
        }
        return;
    }
    for jc in (0..n).step_by(nc) {
        let ncb = nc.min(n - jc);
        let block_at = |ic: usize, pc: usize| block_at(ic, pc, jc);
        match pre {
            // B is packed already: every depth block of this column block is at hand, so
            // each row block runs all its depth blocks in turn while its `MC x NC` block of
            // C stays in L2. With depth blocks outside row blocks, C goes back to memory
            // between depth blocks: at KC = 256 on an Intel Xeon, C's loads and stores
            // were ~10% of an f32 product at depth 1024 (measured by skipping them).
            // Products deeper than KC (a `down_proj`'s 2816) still pass over C per block.
            Prepacked::B(all) => {
                for ic in (0..m).step_by(mc) {
                    for pc in (0..k).step_by(kc) {
                        let at = block_at(ic, pc);
                        // Depth blocks before `pc` are all full (KC), so this one starts
                        // at pc * panels * NR; the block's first panel is jc / NR.
                        let bblock = &all[pc * b_panels * K::NR + (jc / K::NR) * at.kcp * K::NR..];
                        // SAFETY: contract of this function.
                        unsafe { row_block::<K, TA, TB>(&mut cx, &at, bblock) };
                    }
                }
            }
            _ => {
                for pc in (0..k).step_by(kc) {
                    // B's panels are rows of B^T, packed exactly like A's.
                    let kcb = kc.min(k - pc);
                    K::pack::<TB>(job.b.sub(pc, kcb, jc, ncb).t(), K::NR, bbuf);
                    for ic in (0..m).step_by(mc) {
                        // SAFETY: contract of this function.
                        unsafe { row_block::<K, TA, TB>(&mut cx, &block_at(ic, pc), bbuf) };
                    }
                }
            }
        }
    }
}

/// What [`row_block`] needs of the product that is the same for every block.
struct BlockCx<'j, 'a, 's, K: Microkernel, TA, TB> {
    job: &'j Job<'a, TA, TB>,
    pre: Prepacked<'a, K::P>,
    finish: unsafe fn(&Epilogue<'_>, TileAt),
    /// Scratch for A's packed (or copied) block.
    abuf: &'s mut [K::P],
    /// A's rows are read by the kernel: in place (`direct_a`) or copied to `abuf`.
    in_place: bool,
    direct_a: bool,
    a_panels: usize,
    /// Where tiles are computed when an epilogue writes the output from them.
    stack_tile: Option<*mut f32>,
    /// The block of A (first row, first depth) that `abuf` holds, prepared by the last
    /// [`row_block`]; `None` before the first.
    a_block_of: Option<(usize, usize)>,
}

/// One block's position: rows `ic..ic + mcb`, depth `pc..pc + kcb` (`kcp` padded to
/// KSTEP), columns `jc..jc + ncb`.
struct BlockAt {
    ic: usize,
    mcb: usize,
    pc: usize,
    kcb: usize,
    kcp: usize,
    jc: usize,
    ncb: usize,
}

/// Multiplies one `MC x KC` block of A by the packed `KC x NC` block of B (`bblock`, its
/// panels in column order) into C: prepares A's block, then runs the microkernel on every
/// tile, panel by panel of B (each `KC x NR` panel is reused by all of the block's rows).
///
/// # Safety
/// Contract of [`blocked`]; `bblock` holds the packed panels of depth block `at.pc` for
/// columns `at.jc..at.jc + at.ncb`.
#[inline(always)]
unsafe fn row_block<K: Microkernel, TA: Elem, TB: Elem>(
    cx: &mut BlockCx<'_, '_, '_, K, TA, TB>,
    at: &BlockAt,
    bblock: &[K::P],
) {
    let job = cx.job;
    let k = job.a.cols;
    let BlockAt {
        ic,
        mcb,
        pc,
        kcb,
        kcp,
        jc,
        ncb,
    } = *at;
    let beta = if pc == 0 { job.beta } else { 1.0 };
    let epilogue = job.epilogue.filter(|_| pc + kcb == k);
    // The block's rows as the kernel reads them in place (first row, stride): A's own, or
    // their copy at `copy_stride`.
    // `abuf` already holds this block when the previous call prepared it (the same rows
    // and depth against another column block).
    let prepared = cx.a_block_of == Some((ic, pc));
    cx.a_block_of = Some((ic, pc));
    // SAFETY: rows ic..ic + mcb of A hold kcb elements from pc (A's elements are `K::P`,
    // checked by `kernel_reads_rows_of`); abuf holds mc_max * copy_stride(kcp_max) >=
    // mcb * copy_stride(kcb) elements.
    let a_rows = cx.in_place.then(|| unsafe {
        let src = (job.a.data.as_ptr() as *const K::P).add(job.a.offset + ic * job.a.rs + pc);
        if cx.direct_a {
            return (src, job.a.rs);
        }
        let stride = copy_stride::<K::P>(kcb);
        if !prepared {
            for r in 0..mcb {
                std::ptr::copy_nonoverlapping(
                    src.add(r * job.a.rs),
                    cx.abuf.as_mut_ptr().add(r * stride),
                    kcb,
                );
            }
        }
        (cx.abuf.as_ptr(), stride)
    });
    let ablock: &[K::P] = match cx.pre {
        _ if cx.in_place => &[],
        Prepacked::A(all) => &all[pc * cx.a_panels * K::MR + (ic / K::MR) * kcp * K::MR..],
        _ => {
            if !prepared {
                K::pack::<TA>(job.a.sub(ic, mcb, pc, kcb), K::MR, cx.abuf);
            }
            cx.abuf
        }
    };
    for jr in (0..ncb).step_by(K::NR) {
        let nr = K::NR.min(ncb - jr);
        let bp = &bblock[(jr / K::NR) * kcp * K::NR..];
        for ir in (0..mcb).step_by(K::MR) {
            let mr = K::MR.min(mcb - ir);
            // SAFETY: (ic+ir, jc+jr) is inside the C block (loop bounds), and the packed
            // panels hold kcp * MR and kcp * NR elements; rows read in place (cs == 1, kcp
            // == kcb) hold kcb elements each; the stack tile holds MR x NR. The epilogue
            // gets the finished tile (its last depth block), while it is in L1, and the
            // task owns the tile's rows and columns of the output as it does of C.
            unsafe {
                let (c, ldc) = match cx.stack_tile {
                    Some(tile) => (tile, K::NR),
                    None => (job.c.0.add((ic + ir) * job.ldc + jc + jr), job.ldc),
                };
                if let Some((rows, lda)) = a_rows {
                    let args = (rows.add(ir * lda), lda, mr, nr, job.alpha, beta);
                    tile_direct_a::<K>(kcp, bp, c, ldc, args);
                } else {
                    let ap = &ablock[(ir / K::MR) * kcp * K::MR..];
                    tile::<K>(kcp, ap, bp, c, ldc, mr, nr, job.alpha, beta);
                }
                if let Some(e) = epilogue {
                    let (row, col) = (job.origin.0 + ic + ir, job.origin.1 + jc + jr);
                    let dst = job.c.0.add((ic + ir) * job.ldc + jc + jr);
                    (cx.finish)(
                        e,
                        TileAt {
                            row,
                            col,
                            rows: mr,
                            cols: nr,
                            c,
                            ldc,
                            dst,
                            ldd: job.ldc,
                        },
                    );
                }
            }
        }
    }
}

/// Largest B (depth x its row stride, bytes) a small product reads in place: the tiles read
/// B's rows where they lie, and rows far apart would share cache sets (a weight's rows 4 KiB
/// apart fit 32 KiB of L2), where packing them is what keeps B in cache.
const SMALL_B_BYTES: usize = 64 << 10;

/// A product small enough to run without packing, its operands read where they lie: f32
/// A read by rows (in place, no aliasing stride) or as rows of A^T (`a.rs == 1`), f32 B
/// row-major and whole panels wide, one depth block. Attention's tile products are such
/// (with K and V transposed once ahead for `Q K^T` and `dO V^T`): each packed its operands
/// per tile, ~a sixth of the attention backward's time.
struct SmallProduct<'a> {
    a: &'a [f32],
    b: &'a [f32],
    /// A is read as rows of A^T (step `a.cs`), not row by row.
    a_steps: bool,
}

impl<'a> SmallProduct<'a> {
    fn of<K: Microkernel, TA: Elem, TB: Elem>(job: &Job<'a, TA, TB>) -> Option<Self> {
        let (a, b) = (&job.a, &job.b);
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let (crate::elem::Typed::F32(ad), crate::elem::Typed::F32(bd)) =
            (TA::typed(a.data), TB::typed(b.data))
        else {
            return None;
        };
        let b_ok = b.cs == 1
            && n.is_multiple_of(K::NR)
            && k <= K::KC
            && k * b.rs * std::mem::size_of::<f32>() <= SMALL_B_BYTES;
        let a_rows = a.cs == 1 && reads_a_in_place::<K, TA>(a, k);
        let a_steps = a.rs == 1 && a.cs >= K::MR && m > 1;
        (m > 0 && k > 0 && b_ok && (a_rows || a_steps)).then_some(SmallProduct {
            a: ad,
            b: bd,
            a_steps: !a_rows,
        })
    }
}

/// Runs a [`SmallProduct`]: every tile reads B's panel and A where they lie, except an edge
/// tile of A read by steps, whose last step would read past A's rows: that panel is packed.
///
/// # Safety
/// Contract of [`blocked`], for the job `small` was made from; the CPU has `K`'s
/// instructions.
#[inline(always)]
unsafe fn small_in_place<K: Microkernel, TA, TB>(job: &Job<'_, TA, TB>, small: &SmallProduct<'_>) {
    let (m, k, n) = (job.a.rows, job.a.cols, job.b.cols);
    let mut edge_panel = Vec::new();
    for jr in (0..n).step_by(K::NR) {
        // SAFETY: B's rows 0..k hold columns jr..jr + NR (n is whole panels), at b.rs apart.
        let bp = unsafe { small.b.as_ptr().add(job.b.offset + jr) };
        for ir in (0..m).step_by(K::MR) {
            let mr = K::MR.min(m - ir);
            let a = if small.a_steps {
                // Step p's MR values at offset + p * cs + ir: in the slice for a whole tile;
                // an edge tile's last step may not be.
                let last = job.a.offset + (k - 1) * job.a.cs + ir + K::MR;
                if mr == K::MR || last <= small.a.len() {
                    SmallA::Steps {
                        // SAFETY: inside A's slice (offset + ir + p * cs for p < k).
                        a: unsafe { small.a.as_ptr().add(job.a.offset + ir) },
                        step: job.a.cs,
                    }
                } else {
                    if edge_panel.is_empty() {
                        edge_panel = vec![0f32; k * K::MR];
                        for p in 0..k {
                            let src = job.a.offset + p * job.a.cs + ir;
                            edge_panel[p * K::MR..p * K::MR + mr]
                                .copy_from_slice(&small.a[src..src + mr]);
                        }
                    }
                    SmallA::Steps {
                        a: edge_panel.as_ptr(),
                        step: K::MR,
                    }
                }
            } else {
                SmallA::Rows {
                    // SAFETY: row ir < m of A.
                    a: unsafe { small.a.as_ptr().add(job.a.offset + ir * job.a.rs) },
                    lda: job.a.rs,
                    rows: mr,
                }
            };
            // SAFETY: the C block (ir, jr) is the job's; the operands hold k steps (above);
            // `run_tile` passes a full MR x NR block (C's, or its own scratch).
            unsafe {
                let c = job.c.0.add(ir * job.ldc + jr);
                run_tile::<K>(
                    c,
                    job.ldc,
                    mr,
                    K::NR,
                    job.alpha,
                    job.beta,
                    |c, ldc, alpha, beta| K::run_small(k, a, bp, job.b.rs, c, ldc, alpha, beta),
                );
            }
        }
    }
}

/// The row stride (in elements) at which A's rows are copied for a kernel that reads rows:
/// `depth` elements rounded up to whole pairs of cache lines, plus one line. An odd number
/// of 64-byte lines apart, the twelve rows of a tile fall in twelve different L1 sets;
/// copied `depth` apart, a depth block of 1024 f32s (the f32 kernel's `KC`) would put
/// them 4 KiB apart, all in the same sets, as A's own rows were.
fn copy_stride<P>(depth: usize) -> usize {
    let size = std::mem::size_of::<P>();
    ((depth * size).next_multiple_of(128) + 64) / size
}

/// Whether kernel `K` reads `a` (depth `k`) in place instead of from packed panels: rows of
/// the packed type with contiguous depth, whole bf16 pairs only (an odd depth's last pair
/// would read past the row, where packing pads a zero), and rows not a multiple of 4 KiB
/// apart (every row of a tile would map to the same L1 sets; the f32 kernel lost ~5% that
/// way at depth 1024).
fn reads_a_in_place<K: Microkernel, TA: Elem>(a: &MatRef<'_, TA>, k: usize) -> bool {
    kernel_reads_rows_of::<K, TA>(a, k) && !(a.rs * std::mem::size_of::<TA>()).is_multiple_of(4096)
}

/// Whether kernel `K` can read rows of `a` (depth `k`), in place or copied: rows of the
/// packed type with contiguous depth, whole bf16 pairs only. Rows a multiple of 4 KiB
/// apart are copied per `MC x KC` block to [`copy_stride`] (a `memcpy` per row) instead of
/// transposed into panels: the transposing pack of f32 activations at depth 1024 was
/// ~3.9% of an f32 LoRA step's samples, the copy ~1.4%.
fn kernel_reads_rows_of<K: Microkernel, TA: Elem>(a: &MatRef<'_, TA>, k: usize) -> bool {
    K::reads_a_in_place(a.data) && a.cs == 1 && k.is_multiple_of(K::KSTEP)
}

/// One `MR x NR` tile of C; partial tiles go through a full-size temporary.
///
/// # Safety
/// `c` points to an `mr x nr` block with row stride `ldc` owned by this thread; `a`/`b`
/// are packed panels of at least `kcp * MR` / `kcp * NR` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<K: Microkernel>(
    kcp: usize,
    a: &[K::P],
    b: &[K::P],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    debug_assert!(a.len() >= kcp * K::MR && b.len() >= kcp * K::NR);
    // SAFETY: panels long enough (asserted in debug); `run_tile` passes a full MR x NR
    // block (C's, or its own scratch) and the caller's `mr x nr` block of C.
    unsafe {
        run_tile::<K>(c, ldc, mr, nr, alpha, beta, |c, ldc, alpha, beta| {
            K::run(kcp, a.as_ptr(), b.as_ptr(), c, ldc, alpha, beta)
        })
    };
}

/// Runs `kernel(c, ldc, alpha, beta)` on a full tile straight into C, or on an edge tile
/// (`mr < MR` or `nr < NR`) into scratch whose `mr x nr` corner is then written to C.
///
/// # Safety
/// `c` points to an `mr x nr` block with row stride `ldc` owned by this thread, and
/// `kernel` may write a full `MR x NR` block at the pointer it is given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile<K: Microkernel>(
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
    kernel: impl FnOnce(*mut f32, usize, f32, f32),
) {
    if mr == K::MR && nr == K::NR {
        kernel(c, ldc, alpha, beta);
        return;
    }
    // MAX_TILE is the largest MR*NR of any kernel.
    let mut tmp = [0f32; kernels::MAX_TILE];
    kernel(tmp.as_mut_ptr(), K::NR, 1.0, 0.0);
    // SAFETY: the caller's `mr x nr` block of C.
    unsafe { write_partial(&tmp, K::NR, c, ldc, mr, nr, alpha, beta) };
}

/// `C = alpha * tmp + beta * C` on the `mr x nr` corner of an edge tile computed into
/// `tmp` (row stride `nr_full`).
///
/// # Safety
/// `c` points to an `mr x nr` block with row stride `ldc` owned by this thread.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_partial(
    tmp: &[f32],
    nr_full: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: i < mr, j < nr: inside the caller's block.
            unsafe {
                let dst = c.add(i * ldc + j);
                let v = alpha * tmp[i * nr_full + j];
                *dst = if beta == 0.0 { v } else { v + beta * *dst };
            }
        }
    }
}

/// [`tile`] with A read in place (`args`: A's first row, its stride, the tile's rows and
/// columns, alpha, beta).
///
/// # Safety
/// As [`tile`], with the direct-A conditions of [`Microkernel::run_direct_a`].
#[inline(always)]
unsafe fn tile_direct_a<K: Microkernel>(
    kcp: usize,
    b: &[K::P],
    c: *mut f32,
    ldc: usize,
    (a, lda, mr, nr, alpha, beta): (*const K::P, usize, usize, usize, f32, f32),
) {
    debug_assert!(b.len() >= kcp * K::NR);
    // SAFETY: A's `mr` rows are readable (caller); `run_tile` passes a full MR x NR block
    // (C's, or its own scratch) and the caller's `mr x nr` block of C.
    unsafe {
        run_tile::<K>(c, ldc, mr, nr, alpha, beta, |c, ldc, alpha, beta| {
            K::run_direct_a(kcp, a, lda, mr, b.as_ptr(), c, ldc, alpha, beta)
        })
    };
}

/// `C = beta * C` (the product of an empty inner dimension).
///
/// # Safety
/// Contract of [`run`].
unsafe fn scale_c<TA, TB>(job: &Job<'_, TA, TB>, m: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            // SAFETY: inside the C block.
            unsafe {
                let dst = job.c.0.add(i * job.ldc + j);
                *dst = if job.beta == 0.0 {
                    0.0
                } else {
                    job.beta * *dst
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guided spans tile the side exactly, in whole units but the last, in order, never
    /// growing, and each is at most half a thread's share of what was left.
    #[test]
    fn guided_spans_cover_the_side_in_shrinking_whole_units() {
        for threads in [2, 3, 8] {
            for unit in [1, 12, 32] {
                for len in [1, 5, 12, 13, 100, 2048, 2049, 8192] {
                    let spans = guided_spans(len, unit, threads);
                    let mut next = 0;
                    for (i, &(start, size)) in spans.iter().enumerate() {
                        assert_eq!(start, next, "{len}/{unit}/{threads}: contiguous");
                        assert!(size > 0);
                        assert_eq!(start % unit, 0, "{len}/{unit}/{threads}: whole units");
                        let left = (len - start).div_ceil(unit);
                        let units = size.div_ceil(unit);
                        assert!(units <= left.div_ceil(2 * threads).max(MIN_TASK_UNITS));
                        if let Some(&(_, prev)) = i.checked_sub(1).map(|p| &spans[p]) {
                            assert!(size <= prev, "{len}/{unit}/{threads}: grew");
                        }
                        next = start + size;
                    }
                    assert_eq!(next, len, "{len}/{unit}/{threads}: covered");
                }
            }
        }
        // Two threads over a 2048-token product's 171 twelve-row units: big tasks first.
        let sizes: Vec<usize> = guided_spans(2048, 12, 2).iter().map(|s| s.1 / 12).collect();
        assert_eq!(&sizes[..4], &[43, 32, 24, 18]);
    }

    /// Copied rows never alias: the stride holds the depth and is an odd number of cache
    /// lines, so no two of a tile's twelve rows share an L1 set at any depth.
    #[test]
    fn copy_stride_is_an_odd_number_of_cache_lines() {
        for depth in 1..=4200 {
            for (stride, size) in [
                (copy_stride::<f32>(depth), 4),
                (copy_stride::<bf16>(depth), 2),
            ] {
                assert!(stride >= depth, "depth {depth}");
                let bytes = stride * size;
                assert_eq!(bytes % 64, 0, "depth {depth}: whole lines");
                assert_eq!(bytes / 64 % 2, 1, "depth {depth}: odd number of lines");
                let sets: std::collections::HashSet<usize> =
                    (0..12).map(|r| r * bytes / 64 % 64).collect();
                assert_eq!(sets.len(), 12, "depth {depth}: rows share L1 sets");
            }
        }
    }
}
