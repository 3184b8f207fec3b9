//! Flash-attention style forward and backward on CPU slices.
//!
//! Forward: for a tile of queries (all the query heads sharing one KV head, stacked as rows
//! so each K/V tile is loaded once per group), walk the visible key tiles keeping a running
//! max `m` and sum `l` per row (online softmax); keep only `lse = m + ln l` per row.
//! Backward: per (batch, KV head), recompute each tile's probabilities from `lse`, and
//! accumulate dV, dK for the KV head and dQ for its query heads: no other task touches
//! them, so there are no atomics and no [T x T] buffer.
//!
//! With bf16 inputs every tile product runs on the bf16 GEMM, as in PyTorch's CPU flash
//! attention: the probabilities `P` and score gradients `dS` are computed in f32 and rounded
//! to bf16 only as operands of `P V`, `P^T dO`, `dS K` and `dS^T Q` (the softmax sums, the
//! running max and every accumulator stay f32). On AVX-512 BF16 those products then take
//! half the instructions of f32 ones, and Q, K, V and dO are read from the storage without
//! being widened. f32 and f16 inputs run every product in f32.

use std::mem::MaybeUninit;

use half::bf16;

use super::softmax::{online_softmax_tile, probs_tile, scale_in_place};
use super::visibility::{Tile, Visibility};
use crate::cpu::gemm::{MatRef, gemm_seq, transpose_f32_into};
use crate::cpu::multiversion::multiversion;
use crate::cpu::par::{self, SendPtr};
use crate::elem::{Elem, Typed};

/// Keys per tile.
const BK: usize = 64;
/// Target rows (query positions x heads per KV head) per tile.
const ROWS: usize = 72;
/// Tile rows are kept a multiple of this (the GEMM microkernels' row counts, 6 and 12), so
/// the tile products have no partial microkernel tiles.
const ROW_QUANTUM: usize = 12;

/// A 4-D `[batch, heads, seq, head_dim]` view whose head dim is contiguous.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    /// Storage starting at the view's first element.
    pub data: &'a [T],
    pub dims: [usize; 4],
    pub strides: [usize; 4],
}

impl<'a, T: Elem> View<'a, T> {
    fn row(&self, b: usize, h: usize, t: usize) -> &[T] {
        let s = self.strides;
        &self.data[b * s[0] + h * s[1] + t * s[2]..][..self.dims[3]]
    }

    /// Positions `t0..t1` of `(b, head)` as a `[t1 - t0, head_dim]` matrix over the storage.
    fn rows(&self, b: usize, head: usize, t0: usize, t1: usize) -> MatRef<'a, T> {
        let s = self.strides;
        let start = b * s[0] + head * s[1] + t0 * s[2];
        MatRef::new(self.data, start, t1 - t0, self.dims[3], s[2], 1)
    }

    /// The same view with its elements typed as bf16, when they are bf16.
    fn as_bf16(&self) -> Option<View<'a, bf16>> {
        T::as_bf16(self.data).map(|data| View {
            data,
            dims: self.dims,
            strides: self.strides,
        })
    }
}

/// Rows `(t, g)` of a query-head group for positions `t0..t1`, in the tiles' row order
/// (`(t - t0) * group + g`), copied as bf16 `[rows, head_dim]`.
fn group_rows_bf16(
    x: View<'_, bf16>,
    b: usize,
    kvh: usize,
    group: usize,
    t0: usize,
    t1: usize,
) -> Vec<bf16> {
    let mut out = Vec::with_capacity((t1 - t0) * group * x.dims[3]);
    for t in t0..t1 {
        for g in 0..group {
            out.extend_from_slice(x.row(b, kvh * group + g, t));
        }
    }
    out
}

/// Query positions per tile for `group` query heads per KV head: about `ROWS` rows, a
/// multiple of `ROW_QUANTUM` rows when the sequence is long enough to fill such tiles.
fn q_tile(group: usize) -> usize {
    let step = ROW_QUANTUM / gcd(ROW_QUANTUM, group);
    ROWS.div_ceil(group).next_multiple_of(step)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Output of the forward: `o` with strides `out_strides`, `lse` as `[b, h, t]`.
pub(crate) fn forward<T: Elem>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    vis: &Visibility,
    scale: f32,
    out_strides: [usize; 4],
) -> (Vec<T>, Vec<f32>) {
    let [nb, nh, nq, d] = q.dims;
    let nkv = k.dims[1];
    let group = nh / nkv;
    let bq = q_tile(group);
    let q_tiles = nq.div_ceil(bq);
    let n_out = nb * nh * nq * d;
    // Not zeroed first: the tiles write every row.
    let mut out = Vec::with_capacity(n_out);
    let mut lse = vec![f32::INFINITY; nb * nh * nq];
    let out_ptr = SendPtr(out.spare_capacity_mut().as_mut_ptr());
    let lse_ptr = SendPtr(lse.as_mut_ptr());
    // f32 K transposed once per KV head for every query tile's `Q K^T` (each task
    // transposed its key tiles as it packed them: 15 times over at 256 tokens).
    let kt: Option<Vec<Vec<f32>>> = as_f32(k.data).map(|data| {
        let k32 = View {
            data,
            dims: k.dims,
            strides: k.strides,
        };
        par::map(nb * nkv, |i| key_tiles_t(k32, i / nkv, i % nkv))
    });
    par::for_each(nb * nkv * q_tiles, |task| {
        let (b, kvh, qt) = (
            task / (nkv * q_tiles),
            (task / q_tiles) % nkv,
            task % q_tiles,
        );
        let (i0, i1) = (qt * bq, ((qt + 1) * bq).min(nq));
        let kt = kt.as_ref().map(|heads| &heads[b * nkv + kvh][..]);
        let tile = forward_tile(q, k, v, kt, vis, scale, b, kvh, i0, i1);
        for (r, (o_row, lse_row)) in tile.o.chunks_exact(d).zip(&tile.lse).enumerate() {
            let (t, h) = (i0 + r / group, kvh * group + r % group);
            let start = b * out_strides[0] + h * out_strides[1] + t * out_strides[2];
            // SAFETY: row (b, h, t) belongs to exactly this task (tasks own distinct
            // (b, kv head, query tile) and h ranges over the kv head's query heads);
            // `out_strides` describe a dense buffer of q's dims with the head dim innermost,
            // and `lse` has one slot per (b, h, t).
            unsafe {
                T::store_uninit(
                    o_row,
                    std::slice::from_raw_parts_mut(out_ptr.ptr().add(start), d),
                );
                *lse_ptr.ptr().add((b * nh + h) * nq + t) = *lse_row;
            }
        }
    });
    // SAFETY: the tasks cover every (b, kv head, query tile), so every (b, h, t) row of the
    // dense `out_strides` buffer, n_out elements, was written.
    unsafe { out.set_len(n_out) };
    (out, lse)
}

struct TileOut {
    /// `[rows, d]`, row `r` = (query `i0 + r / group`, head `r % group` of the group).
    o: Vec<f32>,
    lse: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn forward_tile<T: Elem>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    kt: Option<&[f32]>,
    vis: &Visibility,
    scale: f32,
    b: usize,
    kvh: usize,
    i0: usize,
    i1: usize,
) -> TileOut {
    let d = q.dims[3];
    let nk = k.dims[2];
    let group = q.dims[1] / k.dims[1];
    let rows = (i1 - i0) * group;
    // bf16 inputs: every product on the bf16 GEMM straight from the storage (Q K^T scaled
    // by the GEMM), P rounded to bf16 for P V.
    let mut bf16_ops = match (q.as_bf16(), k.as_bf16(), v.as_bf16()) {
        (Some(q16), Some(k16), Some(v16)) => Some((
            group_rows_bf16(q16, b, kvh, group, i0, i1),
            k16,
            v16,
            vec![bf16::ZERO; rows * BK],
        )),
        _ => None,
    };
    let mut qb = Vec::new();
    if bf16_ops.is_none() {
        qb.resize(rows * d, 0f32);
        for (r, dst) in qb.chunks_exact_mut(d).enumerate() {
            T::load(q.row(b, kvh * group + r % group, i0 + r / group), dst);
            scale_in_place(dst, scale);
        }
    }
    let mut o = vec![0f32; rows * d];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut s = vec![0f32; rows * BK];
    let (lo, hi) = key_span(vis, b, i0, i1);
    for j0 in (lo / BK * BK..hi).step_by(BK) {
        let j1 = (j0 + BK).min(nk);
        let class = vis.tile(b, i0, i1, j0, j1);
        if class == Tile::Hidden {
            continue;
        }
        let bk = j1 - j0;
        let s = &mut s[..rows * bk];
        match &bf16_ops {
            Some((q16, k16, ..)) => gemm_seq(
                MatRef::row_major(q16, rows, d),
                k16.rows(b, kvh, j0, j1).t(),
                s,
                bk,
                scale,
                0.0,
            ),
            None => {
                let q = MatRef::row_major(&qb[..], rows, d);
                match kt {
                    Some(kt) => {
                        let kt = MatRef::row_major(&kt[j0 * d..j1 * d], d, bk);
                        gemm_seq(q, kt, s, bk, 1.0, 0.0)
                    }
                    None => gemm_seq(q, k.rows(b, kvh, j0, j1).t(), s, bk, 1.0, 0.0),
                }
            }
        }
        if class == Tile::Partial {
            mask_tile(s, vis, b, i0, group, j0, bk, f32::NEG_INFINITY);
        }
        online_softmax_tile(s, bk, &mut m, &mut l, &mut o, d);
        match &mut bf16_ops {
            Some((_, _, v16, p16)) => {
                let p16 = &mut p16[..rows * bk];
                bf16::store(s, p16);
                gemm_seq(
                    MatRef::row_major(p16, rows, bk),
                    v16.rows(b, kvh, j0, j1),
                    &mut o,
                    d,
                    1.0,
                    1.0,
                );
            }
            // f32 V is read from the storage by the packing (f16 V is widened by it).
            None => gemm_seq(
                MatRef::row_major(s, rows, bk),
                v.rows(b, kvh, j0, j1),
                &mut o,
                d,
                1.0,
                1.0,
            ),
        }
    }
    let mut lse = vec![f32::INFINITY; rows];
    for r in 0..rows {
        let orow = &mut o[r * d..(r + 1) * d];
        // `l` is a sum of exponentials, so 0 means no visible key; NaN (a NaN query or
        // keys, see `online_softmax_tile`) goes through the division and stays NaN.
        if l[r] != 0.0 {
            scale_in_place(orow, 1.0 / l[r]);
            lse[r] = m[r] + l[r].ln();
        } else {
            // No visible key (e.g. a query inside left padding): output 0, and an lse of
            // +inf makes every recomputed probability 0 in the backward.
            orow.fill(0.0);
        }
    }
    TileOut { o, lse }
}

/// The union of the key ranges of queries `[i0, i1)`.
fn key_span(vis: &Visibility, b: usize, i0: usize, i1: usize) -> (usize, usize) {
    (i0..i1).fold((usize::MAX, 0), |(lo, hi), i| {
        let (l, h) = vis.range(b, i);
        if l < h {
            (lo.min(l), hi.max(h))
        } else {
            (lo, hi)
        }
    })
}

/// Rows `j0..j1` of `(b, head)` as f32 `[j1 - j0, d]`.
fn load_rows<T: Elem>(
    x: View<'_, T>,
    b: usize,
    head: usize,
    j0: usize,
    j1: usize,
    dst: &mut [f32],
) {
    let d = x.dims[3];
    for (j, row) in (j0..j1).zip(dst.chunks_exact_mut(d)) {
        T::load(x.row(b, head, j), row);
    }
}

/// Sets the entries of a `[rows, bk]` score tile that a query may not see to `fill`.
#[allow(clippy::too_many_arguments)]
fn mask_tile(
    s: &mut [f32],
    vis: &Visibility,
    b: usize,
    i0: usize,
    group: usize,
    j0: usize,
    bk: usize,
    fill: f32,
) {
    let padding = vis.keys(b, j0, j0 + bk);
    for (r, row) in s.chunks_exact_mut(bk).enumerate() {
        // The row's visible range within the tile, the rest filled (a causal tile's rows
        // end at their own position: one fill of the row's end, not a test per key).
        let (lo, hi) = vis.range(b, i0 + r / group);
        let lo = lo.clamp(j0, j0 + bk) - j0;
        let hi = hi.clamp(j0 + lo, j0 + bk) - j0;
        row[..lo].fill(fill);
        row[hi..].fill(fill);
        if let Some(ok) = padding {
            for (x, &ok) in row[lo..hi].iter_mut().zip(&ok[lo..hi]) {
                if !ok {
                    *x = fill;
                }
            }
        }
    }
}

/// Gradients of the backward: dense buffers of `q`'s (`dq`) and `k`'s/`v`'s dims, laid out
/// by the strides [`backward`] was given.
pub(crate) struct Grads<T> {
    pub dq: Vec<T>,
    pub dk: Vec<T>,
    pub dv: Vec<T>,
}

/// The inputs of the backward besides q, k, v.
pub(crate) struct BackwardInputs<'a, T> {
    /// The forward's output.
    pub o: View<'a, T>,
    /// The gradient of the output.
    pub d_o: View<'a, T>,
    /// `[b, h, t]` log-sum-exp of each row's scaled scores.
    pub lse: &'a [f32],
}

/// Logical strides of the backward's three dense outputs (head dim innermost in each).
#[derive(Clone, Copy)]
pub(crate) struct GradStrides {
    pub dq: [usize; 4],
    pub dk: [usize; 4],
    pub dv: [usize; 4],
}

/// Where a backward task writes: the three (not yet initialised) output buffers and their
/// strides.
#[derive(Clone, Copy)]
struct GradOut<T> {
    dq: SendPtr<MaybeUninit<T>>,
    dk: SendPtr<MaybeUninit<T>>,
    dv: SendPtr<MaybeUninit<T>>,
    strides: GradStrides,
}

impl<T: Elem> GradOut<T> {
    /// Stores the `d`-long `row` at (b, h, t) of the buffer at `ptr` with `strides`.
    ///
    /// # Safety
    /// `strides` must describe a dense buffer at `ptr` holding (b, h, t), head dim
    /// innermost, and no other thread may write that row.
    unsafe fn store(
        ptr: SendPtr<MaybeUninit<T>>,
        strides: [usize; 4],
        b: usize,
        h: usize,
        t: usize,
        row: &[f32],
    ) {
        let start = b * strides[0] + h * strides[1] + t * strides[2];
        // SAFETY: guaranteed by the caller.
        unsafe {
            T::store_uninit(
                row,
                std::slice::from_raw_parts_mut(ptr.ptr().add(start), row.len()),
            )
        }
    }
}

pub(crate) fn backward<T: Elem>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    bw: &BackwardInputs<'_, T>,
    vis: &Visibility,
    scale: f32,
    strides: GradStrides,
) -> Grads<T> {
    let [nb, nh, nq, d] = q.dims;
    let [_, nkv, nk, _] = k.dims;
    let (n_q, n_kv) = (nb * nh * nq * d, nb * nkv * nk * d);
    // Not zeroed first: the tasks write every row.
    let mut grads = Grads {
        dq: Vec::with_capacity(n_q),
        dk: Vec::with_capacity(n_kv),
        dv: Vec::with_capacity(n_kv),
    };
    let out = GradOut {
        dq: SendPtr(grads.dq.spare_capacity_mut().as_mut_ptr()),
        dk: SendPtr(grads.dk.spare_capacity_mut().as_mut_ptr()),
        dv: SendPtr(grads.dv.spare_capacity_mut().as_mut_ptr()),
        strides,
    };
    // One task per (batch, KV head): it owns that KV head's rows of dk and dv and its query
    // heads' rows of dq, wherever the strides put them.
    par::for_each(nb * nkv, |task| {
        let (b, kvh) = (task / nkv, task % nkv);
        backward_task(q, k, v, bw, vis, scale, b, kvh, out);
    });
    // SAFETY: the (b, kv head) tasks wrote every row of dk and dv (all nk positions) and of
    // dq (all nq positions of their query heads, which cover the nh heads): the buffers'
    // whole dense lengths.
    unsafe {
        grads.dq.set_len(n_q);
        grads.dk.set_len(n_kv);
        grads.dv.set_len(n_kv);
    }
    grads
}

/// A backward task's operands of the tile products, in the products' element type `E`:
/// the query-head group's query and output-gradient rows (tile row order, see
/// [`group_rows_bf16`]) and the KV head's keys and values.
struct Operands<'a, E> {
    q: Vec<E>,
    d_o: Vec<E>,
    k: View<'a, E>,
    v: View<'a, E>,
    /// f32: the task's K and V transposed once, key tile by key tile ([`key_tiles_t`]),
    /// for `Q K^T` and `dO V^T`, which otherwise transposed each tile as they packed it,
    /// once per query tile.
    kt: Option<Vec<E>>,
    vt: Option<Vec<E>>,
}

/// KV head `kvh` of batch `b` of the f32 `x` (`[t, d]` per head) transposed tile by key
/// tile: tile `j0..j1` is `[d, j1 - j0]` row-major at `j0 * d`, the right operand of a
/// tile's `Q K^T` read in place by the GEMM.
fn key_tiles_t(x: View<'_, f32>, b: usize, kvh: usize) -> Vec<f32> {
    let [_, _, nk, d] = x.dims;
    let mut out = vec![0f32; nk * d];
    for j0 in (0..nk).step_by(BK) {
        let j1 = (j0 + BK).min(nk);
        transpose_f32_into(x.rows(b, kvh, j0, j1), &mut out[j0 * d..j1 * d]);
    }
    out
}

/// Key tile `j0..j1` of [`key_tiles_t`]'s output, or of `x` transposed where there is none.
fn tile_t<'a, E: Elem>(
    t: &'a Option<Vec<E>>,
    x: &View<'a, E>,
    (b, kvh): (usize, usize),
    j0: usize,
    j1: usize,
) -> MatRef<'a, E> {
    let d = x.dims[3];
    match t {
        Some(t) => MatRef::row_major(&t[j0 * d..j1 * d], d, j1 - j0),
        None => x.rows(b, kvh, j0, j1).t(),
    }
}

/// The element type of the tile products' operands: f32, or bf16 for bf16 inputs.
trait TileElem: Elem {
    /// `src` as an operand: the slice itself for f32, rounded into `buf` for bf16 (PyTorch's
    /// CPU flash attention rounds P and dS the same way).
    fn operand<'a>(src: &'a [f32], buf: &'a mut [Self]) -> &'a [Self];
}

impl TileElem for f32 {
    fn operand<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl TileElem for bf16 {
    fn operand<'a>(src: &'a [f32], buf: &'a mut [bf16]) -> &'a [bf16] {
        let buf = &mut buf[..src.len()];
        bf16::store(src, buf);
        buf
    }
}

/// The slice as f32, when it is f32.
fn as_f32<T: Elem>(x: &[T]) -> Option<&[f32]> {
    match T::typed(x) {
        Typed::F32(s) => Some(s),
        _ => None,
    }
}

/// KV head `kvh` of a non-f32 `x`, widened to `[t, d]` f32 (`None` for f32: read in place).
fn widened<T: Elem>(x: View<'_, T>, b: usize, kvh: usize) -> Option<Vec<f32>> {
    let [_, _, n, d] = x.dims;
    as_f32(x.data).is_none().then(|| {
        let mut out = vec![0f32; n * d];
        load_rows(x, b, kvh, 0, n, &mut out);
        out
    })
}

/// `x` as an f32 view: over its storage when f32, else over its widened KV head `copy`
/// (batch and head strides 0, so the task's (b, kvh) indexes the copy).
fn f32_view<'a, T: Elem>(x: View<'a, T>, copy: &'a Option<Vec<f32>>) -> View<'a, f32> {
    match (copy, as_f32(x.data)) {
        (Some(c), _) => View {
            data: c,
            dims: x.dims,
            strides: [0, 0, x.dims[3], 1],
        },
        (None, Some(data)) => View {
            data,
            dims: x.dims,
            strides: x.strides,
        },
        (None, None) => unreachable!("`widened` copies every non-f32 view"),
    }
}

/// Rows `(t, g)` of a query-head group for all positions, in tile row order, as f32.
fn group_rows_f32<T: Elem>(x: View<'_, T>, b: usize, kvh: usize, group: usize) -> Vec<f32> {
    let [_, _, nq, d] = x.dims;
    // Appended row by row rather than zeroed and overwritten (a quarter-MiB buffer per task
    // and operand: the zeroing was a pass of its own).
    let mut out = Vec::with_capacity(nq * group * d);
    let mut buf = vec![0f32; d];
    for r in 0..nq * group {
        out.extend_from_slice(T::widen(
            x.row(b, kvh * group + r % group, r / group),
            &mut buf,
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn backward_task<T: Elem>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    bw: &BackwardInputs<'_, T>,
    vis: &Visibility,
    scale: f32,
    b: usize,
    kvh: usize,
    out: GradOut<T>,
) {
    let [_, nh, nq, d] = q.dims;
    let [_, nkv, nk, _] = k.dims;
    let group = nh / nkv;
    // Row (t, g) of the group, index t * group + g: any range of t is a contiguous block.
    let rows_all = nq * group;
    let mut lse = vec![0f32; rows_all];
    let mut delta = vec![0f32; rows_all];
    let (mut do_row, mut o_row) = (vec![0f32; d], vec![0f32; d]);
    for t in 0..nq {
        for g in 0..group {
            let (h, r) = (kvh * group + g, t * group + g);
            T::load(bw.d_o.row(b, h, t), &mut do_row);
            T::load(bw.o.row(b, h, t), &mut o_row);
            delta[r] = dot(&do_row, &o_row);
            lse[r] = bw.lse[(b * nh + h) * nq + t];
        }
    }
    let rows = RowStats {
        lse: &lse,
        delta: &delta,
    };
    let mut dqa = vec![0f32; rows_all * d];
    let mut dka = vec![0f32; nk * d];
    let mut dva = vec![0f32; nk * d];
    let acc = Accumulators {
        dq: &mut dqa,
        dk: &mut dka,
        dv: &mut dva,
    };
    let at = TaskAt { b, kvh, group, nq };
    match (q.as_bf16(), k.as_bf16(), v.as_bf16(), bw.d_o.as_bf16()) {
        (Some(q16), Some(k16), Some(v16), Some(do16)) => {
            let ops = Operands {
                q: group_rows_bf16(q16, b, kvh, group, 0, nq),
                d_o: group_rows_bf16(do16, b, kvh, group, 0, nq),
                k: k16,
                v: v16,
                kt: None,
                vt: None,
            };
            backward_tiles(&ops, rows, acc, vis, scale, at);
        }
        _ => {
            // f32 K and V are read in place; f16 ones are widened once.
            let (kw, vw) = (widened(k, b, kvh), widened(v, b, kvh));
            let (k, v) = (f32_view(k, &kw), f32_view(v, &vw));
            let ops = Operands {
                q: group_rows_f32(q, b, kvh, group),
                d_o: group_rows_f32(bw.d_o, b, kvh, group),
                kt: Some(key_tiles_t(k, b, kvh)),
                vt: Some(key_tiles_t(v, b, kvh)),
                k,
                v,
            };
            backward_tiles(&ops, rows, acc, vis, scale, at);
        }
    }
    // SAFETY: this task is the only one with batch `b` and KV head `kvh`, so it alone
    // writes dk/dv rows (b, kvh, *) and dq rows (b, h, *) of its query heads; `backward`
    // made each buffer dense for its strides.
    unsafe {
        // dqa rows are (t, g).
        for t in 0..nq {
            for g in 0..group {
                let r = t * group + g;
                let row = &dqa[r * d..(r + 1) * d];
                GradOut::store(out.dq, out.strides.dq, b, kvh * group + g, t, row);
            }
        }
        for t in 0..nk {
            let rows = t * d..(t + 1) * d;
            GradOut::store(out.dk, out.strides.dk, b, kvh, t, &dka[rows.clone()]);
            GradOut::store(out.dv, out.strides.dv, b, kvh, t, &dva[rows]);
        }
    }
}

/// Per query row of a backward task: the forward's log-sum-exp and `delta = dO . O`.
#[derive(Clone, Copy)]
struct RowStats<'a> {
    lse: &'a [f32],
    delta: &'a [f32],
}

/// A backward task's f32 gradient accumulators: dQ in tile row order, dK and dV `[t, d]`.
struct Accumulators<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

/// Where a backward task sits: batch `b`, KV head `kvh`, `group` query heads per KV head,
/// `nq` query positions.
#[derive(Clone, Copy)]
struct TaskAt {
    b: usize,
    kvh: usize,
    group: usize,
    nq: usize,
}

/// The tile loop of one backward task: per (query tile, key tile), recompute P, then
/// accumulate dV, dQ and dK.
fn backward_tiles<E: TileElem>(
    ops: &Operands<'_, E>,
    stats: RowStats<'_>,
    acc: Accumulators<'_>,
    vis: &Visibility,
    scale: f32,
    at: TaskAt,
) {
    let TaskAt { b, kvh, group, nq } = at;
    let [_, _, nk, d] = ops.k.dims;
    let bq = q_tile(group);
    let mut p = vec![0f32; bq * group * BK];
    let mut dp = vec![0f32; bq * group * BK];
    let mut p_buf = vec![E::from_f32(0.0); bq * group * BK];
    let mut ds_buf = vec![E::from_f32(0.0); bq * group * BK];
    for i0 in (0..nq).step_by(bq) {
        let i1 = (i0 + bq).min(nq);
        let rows = (i1 - i0) * group;
        let rr = i0 * group * d..i1 * group * d;
        let q = MatRef::row_major(&ops.q[rr.clone()], rows, d);
        let d_o = MatRef::row_major(&ops.d_o[rr.clone()], rows, d);
        let (lo, hi) = key_span(vis, b, i0, i1);
        for j0 in (lo / BK * BK..hi).step_by(BK) {
            let j1 = (j0 + BK).min(nk);
            let class = vis.tile(b, i0, i1, j0, j1);
            if class == Tile::Hidden {
                continue;
            }
            let bk = j1 - j0;
            let k = ops.k.rows(b, kvh, j0, j1);
            let (kt, vt) = (
                tile_t(&ops.kt, &ops.k, (b, kvh), j0, j1),
                tile_t(&ops.vt, &ops.v, (b, kvh), j0, j1),
            );
            let p = &mut p[..rows * bk];
            let dp = &mut dp[..rows * bk];
            // P = exp(scale Q K^T - lse)
            gemm_seq(q, kt, p, bk, scale, 0.0);
            probs_tile(p, bk, &stats.lse[i0 * group..i0 * group + rows]);
            if class == Tile::Partial {
                mask_tile(p, vis, b, i0, group, j0, bk, 0.0);
            }
            let p_op = MatRef::row_major(E::operand(p, &mut p_buf), rows, bk);
            // dV += P^T dO
            gemm_seq(p_op.t(), d_o, &mut acc.dv[j0 * d..j1 * d], d, 1.0, 1.0);
            // dP = dO V^T, then dS = P (dP - delta)
            gemm_seq(d_o, vt, dp, bk, 1.0, 0.0);
            for (r, (dprow, prow)) in dp.chunks_exact_mut(bk).zip(p.chunks_exact(bk)).enumerate() {
                softmax_grad_row(dprow, prow, stats.delta[i0 * group + r]);
            }
            let ds_op = MatRef::row_major(E::operand(dp, &mut ds_buf), rows, bk);
            // dQ += scale dS K ; dK += scale dS^T Q
            gemm_seq(ds_op, k, &mut acc.dq[rr.clone()], d, scale, 1.0);
            gemm_seq(ds_op.t(), q, &mut acc.dk[j0 * d..j1 * d], d, scale, 1.0);
        }
    }
}

multiversion! {
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        let (ac, at) = a.as_chunks::<16>();
        let (bc, bt) = b.as_chunks::<16>();
        for (x, y) in ac.iter().zip(bc) {
            for i in 0..16 {
                lanes[i] += x[i] * y[i];
            }
        }
        lanes.iter().sum::<f32>() + at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>()
    }
}

multiversion! {
    /// `dp = p * (dp - delta)`: the softmax backward of one row.
    fn softmax_grad_row(dp: &mut [f32], p: &[f32], delta: f32) {
        for (g, p) in dp.iter_mut().zip(p) {
            *g = p * (*g - delta);
        }
    }
}
