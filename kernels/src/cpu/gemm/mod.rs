//! Matrix multiplication `C = alpha * A B + beta * C` for f32/bf16/f16 inputs, f32 output.
//!
//! A BLIS-style blocked GEMM: panels of A and B are packed (converted to f32, or to bf16
//! pairs for the AVX-512 BF16 kernel) and fed to a register-blocked microkernel chosen at
//! run time. A and B are strided views, so transposes are free. Work is split across the
//! pool's threads by disjoint blocks of C.
//!
//! Why our own: candle's CPU matmul (the `gemm` crate) reaches ~100 GFLOP/s in bf16 on
//! AVX-512 machines where `vdpbf16ps` gives ~4x that, and going through candle for every
//! product costs a tensor allocation and a layout check per call. Owning the GEMM also lets
//! the linear ops accumulate into a bias-initialised output and fuse LoRA's rank-r updates.

#[cfg(target_arch = "x86_64")]
mod asm;
mod driver;
mod epilogue;
mod kernels;
mod pack;

pub use epilogue::{Epilogue, LowRank};

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use crate::cpu::isa::{self, Isa};
use crate::cpu::par::{self, SendPtr};
pub use crate::elem::Elem;

/// A read-only strided matrix view: element `(i, j)` is `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view of `rows x cols` elements of `data`.
    ///
    /// # Panics
    /// If the view reaches past the end of `data` (a caller bug, not an input error).
    pub fn new(
        data: &'a [T],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = offset + (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "MatRef {rows}x{cols} (offset {offset}, strides {rs},{cs}) exceeds {} elements",
                data.len()
            );
        }
        MatRef {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, rows, cols, cols, 1)
    }

    /// The transpose (a view, nothing is copied).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `r0..r0 + rows` and columns `c0..c0 + cols`.
    pub fn sub(self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        assert!(r0 + rows <= self.rows && c0 + cols <= self.cols);
        MatRef {
            offset: self.offset + r0 * self.rs + c0 * self.cs,
            rows,
            cols,
            ..self
        }
    }

    /// The same view over another slice of the same length (a retyped view of `data`).
    fn with_data<U: Copy>(self, data: &'a [U]) -> MatRef<'a, U> {
        debug_assert_eq!(data.len(), self.data.len());
        MatRef {
            data,
            offset: self.offset,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// An operand that is never read (a pre-packed B): only its shape is used.
    fn shape_only(rows: usize, cols: usize) -> Self {
        MatRef {
            data: &[],
            offset: 0,
            rows,
            cols,
            rs: 0,
            cs: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl<'a, T: Elem> MatRef<'a, T> {
    /// `(offset, rows, cols, row stride, column stride)`: which elements the view reads.
    pub fn layout(&self) -> (usize, usize, usize, usize, usize) {
        (self.offset, self.rows, self.cols, self.rs, self.cs)
    }

    /// The same view typed as bf16, when the elements are bf16.
    pub fn as_bf16(self) -> Option<MatRef<'a, half::bf16>> {
        T::as_bf16(self.data).map(|data| self.with_data(data))
    }
}

/// The C a product writes: initialised values, for any `beta`, or uninitialised memory,
/// for `beta == 0` only. With `beta == 0` the kernels only write C (they never load it), and
/// an epilogue or a later depth block reads only elements the product wrote, so an op's
/// fresh output needs no zero-filling first: for f32 outputs that fill was a pass over
/// every product's output (~1.6 GB of writes per checkpointed f32 LoRA step of the bench's
/// ~100M Qwen2, ~3% of its samples).
pub struct COut<'a> {
    ptr: *mut f32,
    len: usize,
    init: bool,
    _borrow: PhantomData<&'a mut [MaybeUninit<f32>]>,
}

impl<'a> COut<'a> {
    /// Initialised C.
    pub fn init(c: &'a mut [f32]) -> Self {
        COut {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            init: true,
            _borrow: PhantomData,
        }
    }

    /// Uninitialised C, for a product with `beta == 0` (asserted by the product).
    pub fn uninit(c: &'a mut [MaybeUninit<f32>]) -> Self {
        COut {
            ptr: c.as_mut_ptr().cast(),
            len: c.len(),
            init: false,
            _borrow: PhantomData,
        }
    }

    /// The pointer and length for a product with this `beta`.
    ///
    /// # Panics
    /// If C is uninitialised and `beta` is not 0 (a caller bug: the product would read it).
    fn for_beta(self, beta: f32) -> (SendPtr<f32>, usize) {
        assert!(
            self.init || beta == 0.0,
            "gemm: uninitialised C with beta {beta}"
        );
        (SendPtr(self.ptr), self.len)
    }
}

/// A right operand `B` (`k x n`, bf16) packed once for the AVX-512 BF16 kernel, for a frozen
/// weight that many products use unchanged: [`gemm_prepacked_b`] skips packing it (for
/// `dx = g W` that packing gathers pairs down W's columns, a few % of a bf16 LoRA step).
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<half::bf16>,
}

impl PackedB {
    /// Packs `b`, or `None` where the bf16 kernel is not in use (the CPU lacks AVX-512 BF16,
    /// is an Intel one, or `KUBESWIFT_KERNELS_ISA` says otherwise: see `cpu::isa`), so
    /// callers keep the plain [`gemm`].
    pub fn new(b: MatRef<'_, half::bf16>) -> Option<PackedB> {
        let data = driver::pack_b_bf16(isa::active().min(isa::detected()), b)?;
        Some(PackedB {
            k: b.rows,
            n: b.cols,
            data,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<half::bf16>()
    }
}

/// [`gemm`] with `B` pre-packed: `C = alpha * A B + beta * C`, the same arithmetic.
///
/// # Panics
/// If the shapes disagree or `c` is too short (caller bugs).
pub fn gemm_prepacked_b(
    a: MatRef<'_, half::bf16>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    gemm_prepacked_b_then(a, b, c, ldc, alpha, beta, None);
}

/// [`gemm_prepacked_b`] followed by `epilogue` on each finished tile (see [`Epilogue`]).
///
/// # Panics
/// If the shapes disagree, `c` is too short or the epilogue does not fit (caller bugs).
pub fn gemm_prepacked_b_then(
    a: MatRef<'_, half::bf16>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: Option<&Epilogue<'_>>,
) {
    gemm_prepacked_b_out(a, b, COut::init(c), ldc, alpha, beta, epilogue);
}

/// [`gemm_prepacked_b_then`] into a [`COut`].
///
/// # Panics
/// As [`gemm_prepacked_b_then`]; also if `c` is uninitialised and `beta` is not 0.
pub fn gemm_prepacked_b_out(
    a: MatRef<'_, half::bf16>,
    b: &PackedB,
    c: COut<'_>,
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: Option<&Epilogue<'_>>,
) {
    let (m, k, n) = (a.rows, a.cols, b.n);
    assert_eq!(b.k, k, "gemm_prepacked_b: inner dimensions differ");
    let (c, c_len) = c.for_beta(beta);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && (m - 1) * ldc + n <= c_len,
        "gemm_prepacked_b: C too short"
    );
    let epilogue = epilogue.filter(|e| !e.is_noop());
    if let Some(e) = epilogue {
        e.check(m, n);
    }
    let job = driver::Job {
        a,
        b: MatRef::shape_only(k, n),
        c,
        ldc,
        alpha,
        beta,
        origin: (0, 0),
        epilogue,
    };
    let threads = if m * n * k >= PARALLEL_MIN_FMAS {
        par::threads()
    } else {
        1
    };
    // SAFETY: `c` covers the m x n block with stride ldc (asserted above) and is borrowed
    // mutably for the whole call (uninitialised only with beta 0, when it is only written),
    // as the epilogue's output is for its lifetime; `b.data` was packed by `pack_b_bf16` for
    // a k x n matrix on this CPU.
    unsafe { driver::run_prepacked_b(&job, &b.data, threads) };
}

/// `dst` (`[cols, rows]` row-major) = `src` (`rows x cols`, f32, contiguous along its
/// columns) transposed: one panel of the packing, whose AVX2 path transposes 8 x 8 blocks in
/// registers. For operands a caller reuses transposed (attention's K and V tiles).
///
/// # Panics
/// If `dst` is not `rows * cols` long or `src` is not contiguous along its columns.
pub(crate) fn transpose_f32_into(src: MatRef<'_, f32>, dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.rows * src.cols,
        "transpose_f32_into: dst length"
    );
    assert_eq!(src.cs, 1, "transpose_f32_into: src columns not contiguous");
    if src.rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx2 {
        // SAFETY: `active()` only reports levels the CPU has (AVX2 implies F16C here, as
        // for the packing's own callers); `dst` holds the one panel of `rows` rows.
        unsafe { pack::pack_f32_x86(src, src.rows, dst) };
        return;
    }
    pack::pack_f32(src, src.rows, dst);
}

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 19;

/// `C = alpha * A B + beta * C` on all threads with the best kernel for this CPU.
///
/// `c` is row-major `a.rows() x b.cols()` with row stride `ldc`. With `beta == 0`, `c` is
/// only written. Arithmetic is f32 (bf16 products are exact in f32; the AVX-512 BF16 kernel
/// accumulates pairs of products as `vdpbf16ps` does).
///
/// # Panics
/// If the shapes disagree or `c` is too short (caller bugs).
pub fn gemm<TA: Elem, TB: Elem>(
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    gemm_with(isa::active(), true, a, b, c, ldc, alpha, beta);
}

/// [`gemm`] on the calling thread only (for callers that are already inside a parallel task).
pub fn gemm_seq<TA: Elem, TB: Elem>(
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    gemm_with(isa::active(), false, a, b, c, ldc, alpha, beta);
}

/// [`gemm`] followed by `epilogue` on each finished tile (see [`Epilogue`]): a bias, a
/// low-rank term and the rounding of C fused into the product instead of passes over C.
///
/// # Panics
/// If the shapes disagree, `c` is too short or the epilogue does not fit (caller bugs).
pub fn gemm_then<TA: Elem, TB: Elem>(
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: &Epilogue<'_>,
) {
    gemm_then_out(a, b, COut::init(c), ldc, alpha, beta, epilogue);
}

/// [`gemm_then`] into a [`COut`].
///
/// # Panics
/// As [`gemm_then`]; also if `c` is uninitialised and `beta` is not 0.
pub fn gemm_then_out<TA: Elem, TB: Elem>(
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: COut<'_>,
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: &Epilogue<'_>,
) {
    gemm_impl_out(
        isa::active(),
        true,
        a,
        b,
        c,
        ldc,
        alpha,
        beta,
        Some(epilogue),
    );
}

/// [`gemm`] with an explicit instruction-set level (capped at what the CPU has) and
/// threading choice; tests use it to cover every kernel.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with<TA: Elem, TB: Elem>(
    isa_level: Isa,
    parallel: bool,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    gemm_impl(isa_level, parallel, a, b, c, ldc, alpha, beta, None);
}

/// [`gemm_with`] with an optional epilogue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_impl<TA: Elem, TB: Elem>(
    isa_level: Isa,
    parallel: bool,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: Option<&Epilogue<'_>>,
) {
    gemm_impl_out(
        isa_level,
        parallel,
        a,
        b,
        COut::init(c),
        ldc,
        alpha,
        beta,
        epilogue,
    );
}

/// [`gemm_impl`] into a [`COut`].
#[allow(clippy::too_many_arguments)]
fn gemm_impl_out<TA: Elem, TB: Elem>(
    isa_level: Isa,
    parallel: bool,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: COut<'_>,
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: Option<&Epilogue<'_>>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    let (c, c_len) = c.for_beta(beta);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && (m - 1) * ldc + n <= c_len, "gemm: C too short");
    let epilogue = epilogue.filter(|e| !e.is_noop());
    if let Some(e) = epilogue {
        e.check(m, n);
    }
    let isa_level = isa_level.min(isa::detected());
    let job = driver::Job {
        a,
        b,
        c,
        ldc,
        alpha,
        beta,
        origin: (0, 0),
        epilogue,
    };
    let threads = if parallel && m * n * k >= PARALLEL_MIN_FMAS {
        par::threads()
    } else {
        1
    };
    // SAFETY: `c` covers the m x n block with stride ldc (asserted above) and is borrowed
    // mutably for the whole call (uninitialised only with beta 0, when it is only written),
    // as the epilogue's output is for its lifetime.
    unsafe { driver::run(isa_level, &job, threads) };
}

#[cfg(test)]
mod tests;
