//! The blocked loops around the microkernels: pack panels of A and B, walk C in tiles.

use std::cell::RefCell;

use half::bf16;

use super::MatRef;
use super::kernels::{self, Microkernel};
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
}

/// Runs `job` on this thread with the best kernel for `isa` and the element types.
///
/// # Safety
/// `job.c` must point to a writable `a.rows x b.cols` block with row stride `ldc` that no
/// other thread touches during the call.
pub(super) unsafe fn run<TA: Elem, TB: Elem>(isa: Isa, job: &Job<'_, TA, TB>) {
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
            };
            // SAFETY: the CPU has AVX-512 BF16 (`isa` is capped at the detected level) and
            // the caller's contract on C is passed on.
            unsafe { run_avx512bf16(&job) };
            return;
        }
        if isa >= Isa::Avx512 {
            // SAFETY: as above, for AVX-512 F.
            unsafe { run_avx512(job) };
            return;
        }
        if isa >= Isa::Avx2 {
            // SAFETY: as above, for AVX2 + FMA.
            unsafe { run_avx2(job) };
            return;
        }
    }
    let _ = isa;
    // SAFETY: the caller's contract on C is passed on.
    unsafe { blocked::<kernels::Scalar, TA, TB>(job) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<TA: Elem, TB: Elem>(job: &Job<'_, TA, TB>) {
    // SAFETY: contract of `run`.
    unsafe { blocked::<kernels::Avx2, TA, TB>(job) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn run_avx512<TA: Elem, TB: Elem>(job: &Job<'_, TA, TB>) {
    // SAFETY: contract of `run`.
    unsafe { blocked::<kernels::Avx512, TA, TB>(job) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn run_avx512bf16(job: &Job<'_, bf16, bf16>) {
    // SAFETY: contract of `run`.
    unsafe { blocked::<kernels::Avx512Bf16, bf16, bf16>(job) }
}

thread_local! {
    static SCRATCH_F32: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static SCRATCH_BF16: RefCell<(Vec<bf16>, Vec<bf16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Packed-element types, with a per-thread pair of reusable packing buffers (packing
/// buffers are MBs; allocating them per call costs page faults on every product).
pub(super) trait Packed: Copy + Default + 'static {
    fn with_buffers<R>(
        len_a: usize,
        len_b: usize,
        f: impl FnOnce(&mut [Self], &mut [Self]) -> R,
    ) -> R;
}

fn with_cached<P: Copy + Default, R>(
    cache: &'static std::thread::LocalKey<RefCell<(Vec<P>, Vec<P>)>>,
    len_a: usize,
    len_b: usize,
    f: impl FnOnce(&mut [P], &mut [P]) -> R,
) -> R {
    cache.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            if a.len() < len_a {
                a.resize(len_a, P::default());
            }
            if b.len() < len_b {
                b.resize(len_b, P::default());
            }
            f(&mut a[..len_a], &mut b[..len_b])
        }
        // Re-entered on this thread (cannot happen today): use fresh buffers.
        Err(_) => f(
            &mut vec![P::default(); len_a],
            &mut vec![P::default(); len_b],
        ),
    })
}

impl Packed for f32 {
    fn with_buffers<R>(
        len_a: usize,
        len_b: usize,
        f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
    ) -> R {
        with_cached(&SCRATCH_F32, len_a, len_b, f)
    }
}

impl Packed for bf16 {
    fn with_buffers<R>(
        len_a: usize,
        len_b: usize,
        f: impl FnOnce(&mut [bf16], &mut [bf16]) -> R,
    ) -> R {
        with_cached(&SCRATCH_BF16, len_a, len_b, f)
    }
}

/// The BLIS loop nest: for each `NC` block of columns and `KC` slice of depth, pack B once;
/// for each `MC` block of rows pack A; run the microkernel on every `MR x NR` tile.
///
/// # Safety
/// Contract of [`run`]; additionally the CPU must support `K`'s instructions.
#[inline(always)]
unsafe fn blocked<K: Microkernel, TA: Elem, TB: Elem>(job: &Job<'_, TA, TB>) {
    let (m, k, n) = (job.a.rows, job.a.cols, job.b.cols);
    if k == 0 {
        // SAFETY: contract of `run` (C block is ours).
        unsafe { scale_c(job, m, n) };
        return;
    }
    let (mc, kc, nc) = (K::MC, K::KC, K::NC);
    let kcp_max = kc.min(k).next_multiple_of(K::KSTEP);
    let mc_max = mc.min(m.next_multiple_of(K::MR));
    let nc_max = nc.min(n.next_multiple_of(K::NR));
    K::P::with_buffers(mc_max * kcp_max, nc_max * kcp_max, |abuf, bbuf| {
        for jc in (0..n).step_by(nc) {
            let ncb = nc.min(n - jc);
            for pc in (0..k).step_by(kc) {
                let kcb = kc.min(k - pc);
                let kcp = kcb.next_multiple_of(K::KSTEP);
                // B's panels are rows of B^T, packed exactly like A's.
                K::pack::<TB>(job.b.sub(pc, kcb, jc, ncb).t(), K::NR, bbuf);
                let beta = if pc == 0 { job.beta } else { 1.0 };
                for ic in (0..m).step_by(mc) {
                    let mcb = mc.min(m - ic);
                    K::pack::<TA>(job.a.sub(ic, mcb, pc, kcb), K::MR, abuf);
                    for jr in (0..ncb).step_by(K::NR) {
                        let nr = K::NR.min(ncb - jr);
                        let bp = &bbuf[(jr / K::NR) * kcp * K::NR..];
                        for ir in (0..mcb).step_by(K::MR) {
                            let mr = K::MR.min(mcb - ir);
                            let ap = &abuf[(ir / K::MR) * kcp * K::MR..];
                            // SAFETY: (ic+ir, jc+jr) is inside the C block (loop bounds), and
                            // the packed panels hold kcp * MR and kcp * NR elements.
                            unsafe {
                                let c = job.c.0.add((ic + ir) * job.ldc + jc + jr);
                                tile::<K>(kcp, ap, bp, c, job.ldc, mr, nr, job.alpha, beta);
                            }
                        }
                    }
                }
            }
        }
    });
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
    if mr == K::MR && nr == K::NR {
        // SAFETY: full tile inside C (caller), panels long enough (asserted in debug).
        unsafe { K::run(kcp, a.as_ptr(), b.as_ptr(), c, ldc, alpha, beta) };
        return;
    }
    let mut tmp = [0f32; kernels::MAX_TILE];
    // SAFETY: `tmp` holds MR x NR (MAX_TILE is the largest MR*NR of any kernel).
    unsafe {
        K::run(
            kcp,
            a.as_ptr(),
            b.as_ptr(),
            tmp.as_mut_ptr(),
            K::NR,
            1.0,
            0.0,
        )
    };
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: i < mr, j < nr: inside the caller's block.
            unsafe {
                let dst = c.add(i * ldc + j);
                let v = alpha * tmp[i * K::NR + j];
                *dst = if beta == 0.0 { v } else { v + beta * *dst };
            }
        }
    }
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
