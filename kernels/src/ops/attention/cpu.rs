//! Flash-attention style forward and backward on CPU slices.
//!
//! Forward: for a tile of queries (all the query heads sharing one KV head, stacked as rows
//! so each K/V tile is loaded once per group), walk the visible key tiles keeping a running
//! max `m` and sum `l` per row (online softmax); keep only `lse = m + ln l` per row.
//! Backward: per (batch, KV head), recompute each tile's probabilities from `lse`, and
//! accumulate dV, dK for the KV head and dQ for its query heads: no other task touches
//! them, so there are no atomics and no [T x T] buffer.
//!
//! With bf16 inputs, the products of two bf16 operands (`Q K^T` and `dO V^T`) run on the
//! bf16 GEMM: bf16 x bf16 products are exact in f32, so only the order of the f32 sums
//! changes. Products with a probability or score-gradient operand stay in f32 (rounding
//! those to bf16, as PyTorch's CPU flash attention does, would change the numerics).

use half::bf16;

use super::visibility::{Tile, Visibility};
use crate::cpu::gemm::{MatRef, gemm_seq};
use crate::cpu::math::exp;
use crate::cpu::multiversion::multiversion;
use crate::cpu::par::{self, SendPtr};
use crate::elem::Elem;

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
    let mut out = par::filled(nb * nh * nq * d, T::from_f32(0.0));
    let mut lse = vec![f32::INFINITY; nb * nh * nq];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let lse_ptr = SendPtr(lse.as_mut_ptr());
    par::for_each(nb * nkv * q_tiles, |task| {
        let (b, kvh, qt) = (
            task / (nkv * q_tiles),
            (task / q_tiles) % nkv,
            task % q_tiles,
        );
        let (i0, i1) = (qt * bq, ((qt + 1) * bq).min(nq));
        let tile = forward_tile(q, k, v, vis, scale, b, kvh, i0, i1);
        for (r, (o_row, lse_row)) in tile.o.chunks_exact(d).zip(&tile.lse).enumerate() {
            let (t, h) = (i0 + r / group, kvh * group + r % group);
            let start = b * out_strides[0] + h * out_strides[1] + t * out_strides[2];
            // SAFETY: row (b, h, t) belongs to exactly this task (tasks own distinct
            // (b, kv head, query tile) and h ranges over the kv head's query heads);
            // `out_strides` describe a dense buffer of q's dims with the head dim innermost,
            // and `lse` has one slot per (b, h, t).
            unsafe {
                T::store(
                    o_row,
                    std::slice::from_raw_parts_mut(out_ptr.ptr().add(start), d),
                );
                *lse_ptr.ptr().add((b * nh + h) * nq + t) = *lse_row;
            }
        }
    });
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
    // bf16 inputs: Q K^T on the bf16 GEMM straight from the storage, scaled by the GEMM.
    let bf16_qk = q
        .as_bf16()
        .zip(k.as_bf16())
        .map(|(q16, k16)| (group_rows_bf16(q16, b, kvh, group, i0, i1), k16));
    let mut qb = Vec::new();
    if bf16_qk.is_none() {
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
    // bf16 V is widened with SIMD into `vt` first (the packing's own widening is scalar);
    // f32 V is read from the storage by the packing (a copy of each key tile, made again
    // for every query tile, was a pass more).
    let widen_v = v.as_bf16().is_some();
    let mut vt = if widen_v {
        vec![0f32; BK * d]
    } else {
        Vec::new()
    };
    let (lo, hi) = key_span(vis, b, i0, i1);
    for j0 in (lo / BK * BK..hi).step_by(BK) {
        let j1 = (j0 + BK).min(nk);
        let class = vis.tile(b, i0, i1, j0, j1);
        if class == Tile::Hidden {
            continue;
        }
        let bk = j1 - j0;
        let s = &mut s[..rows * bk];
        match &bf16_qk {
            Some((q16, k16)) => gemm_seq(
                MatRef::row_major(q16, rows, d),
                k16.rows(b, kvh, j0, j1).t(),
                s,
                bk,
                scale,
                0.0,
            ),
            None => gemm_seq(
                MatRef::row_major(&qb, rows, d),
                k.rows(b, kvh, j0, j1).t(),
                s,
                bk,
                1.0,
                0.0,
            ),
        }
        if class == Tile::Partial {
            mask_tile(s, vis, b, i0, group, j0, bk, f32::NEG_INFINITY);
        }
        for (r, srow) in s.chunks_exact_mut(bk).enumerate() {
            let corr = online_softmax_row(srow, &mut m[r], &mut l[r]);
            if corr != 1.0 {
                scale_in_place(&mut o[r * d..(r + 1) * d], corr);
            }
        }
        let p = MatRef::row_major(s, rows, bk);
        if widen_v {
            load_rows(v, b, kvh, j0, j1, &mut vt);
            gemm_seq(
                p,
                MatRef::row_major(&vt[..bk * d], bk, d),
                &mut o,
                d,
                1.0,
                1.0,
            );
        } else {
            gemm_seq(p, v.rows(b, kvh, j0, j1), &mut o, d, 1.0, 1.0);
        }
    }
    let mut lse = vec![f32::INFINITY; rows];
    for r in 0..rows {
        let orow = &mut o[r * d..(r + 1) * d];
        if l[r] > 0.0 {
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
    for (r, row) in s.chunks_exact_mut(bk).enumerate() {
        let (lo, hi) = vis.range(b, i0 + r / group);
        for (j, x) in row.iter_mut().enumerate() {
            let key = j0 + j;
            if key < lo || key >= hi || !vis.key(b, key) {
                *x = fill;
            }
        }
    }
}

multiversion! {
    fn scale_in_place(x: &mut [f32], by: f32) {
        for v in x {
            *v *= by;
        }
    }
}

multiversion! {
    /// Folds one row of scores into the running `(m, l)`; replaces the row by
    /// `exp(s - m_new)` and returns the factor `exp(m_old - m_new)` the row's output
    /// accumulator must be scaled by.
    fn online_softmax_row(s: &mut [f32], m: &mut f32, l: &mut f32) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let (chunks, tail) = s.as_chunks::<16>();
        for c in chunks {
            for i in 0..16 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut mx = tail.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in lanes {
            mx = mx.max(v);
        }
        let m_new = m.max(mx);
        if m_new == f32::NEG_INFINITY {
            // Nothing visible so far: contribute nothing.
            s.fill(0.0);
            return 1.0;
        }
        let mut sums = [0f32; 16];
        let (chunks, tail) = s.as_chunks_mut::<16>();
        for c in chunks {
            for i in 0..16 {
                c[i] = exp(c[i] - m_new);
                sums[i] += c[i];
            }
        }
        let mut sum = 0f32;
        for x in tail {
            *x = exp(*x - m_new);
            sum += *x;
        }
        sum += sums.iter().sum::<f32>();
        let corr = exp(*m - m_new);
        *l = *l * corr + sum;
        *m = m_new;
        corr
    }
}

/// Gradients of the backward, contiguous `[b, h, t, d]` (`dq`) and `[b, kv_h, t, d]`.
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

pub(crate) fn backward<T: Elem>(
    q: View<'_, T>,
    k: View<'_, T>,
    v: View<'_, T>,
    bw: &BackwardInputs<'_, T>,
    vis: &Visibility,
    scale: f32,
) -> Grads<T> {
    let [nb, nh, nq, d] = q.dims;
    let [_, nkv, nk, _] = k.dims;
    let group = nh / nkv;
    let zero = T::from_f32(0.0);
    let mut grads = Grads {
        dq: par::filled(nb * nh * nq * d, zero),
        dk: par::filled(nb * nkv * nk * d, zero),
        dv: par::filled(nb * nkv * nk * d, zero),
    };
    // The query heads of one KV head are adjacent, so each task's dq is one chunk.
    let (dq_len, kv_len) = (group * nq * d, nk * d);
    let dk_ptr = SendPtr(grads.dk.as_mut_ptr());
    let dv_ptr = SendPtr(grads.dv.as_mut_ptr());
    par::for_each_chunk_mut(&mut grads.dq, dq_len.max(1), |task, dq| {
        let (b, kvh) = (task / nkv, task % nkv);
        // SAFETY: task (b, kvh) owns the kv_len elements of its KV head in dk and dv
        // (tasks are distinct (b, kvh) pairs; both buffers hold nb * nkv * kv_len).
        let (dk, dv) = unsafe {
            (
                std::slice::from_raw_parts_mut(dk_ptr.ptr().add(task * kv_len), kv_len),
                std::slice::from_raw_parts_mut(dv_ptr.ptr().add(task * kv_len), kv_len),
            )
        };
        backward_task(q, k, v, bw, vis, scale, b, kvh, dq, dk, dv);
    });
    grads
}

/// The bf16 operands of a backward task's bf16 products: the group's query and
/// output-gradient rows (tile row order), and the KV head's keys and values in place.
struct Bf16Backward<'a> {
    q: Vec<bf16>,
    d_o: Vec<bf16>,
    k: View<'a, bf16>,
    v: View<'a, bf16>,
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
    dq_out: &mut [T],
    dk_out: &mut [T],
    dv_out: &mut [T],
) {
    let [_, nh, nq, d] = q.dims;
    let nk = k.dims[2];
    let group = nh / k.dims[1];
    // Row (t, g) of the group, index t * group + g: any range of t is a contiguous block.
    let rows_all = nq * group;
    let mut qa = vec![0f32; rows_all * d];
    let mut doa = vec![0f32; rows_all * d];
    let mut dqa = vec![0f32; rows_all * d];
    let mut lse = vec![0f32; rows_all];
    let mut delta = vec![0f32; rows_all];
    let mut o_row = vec![0f32; d];
    for t in 0..nq {
        for g in 0..group {
            let (h, r) = (kvh * group + g, t * group + g);
            T::load(q.row(b, h, t), &mut qa[r * d..(r + 1) * d]);
            scale_in_place(&mut qa[r * d..(r + 1) * d], scale);
            T::load(bw.d_o.row(b, h, t), &mut doa[r * d..(r + 1) * d]);
            T::load(bw.o.row(b, h, t), &mut o_row);
            delta[r] = dot(&doa[r * d..(r + 1) * d], &o_row);
            lse[r] = bw.lse[(b * nh + h) * nq + t];
        }
    }
    // bf16 inputs: Q K^T and dO V^T on the bf16 GEMM (V is then needed only there).
    let bf16_ops = match (q.as_bf16(), k.as_bf16(), v.as_bf16(), bw.d_o.as_bf16()) {
        (Some(q16), Some(k16), Some(v16), Some(do16)) => Some(Bf16Backward {
            q: group_rows_bf16(q16, b, kvh, group, 0, nq),
            d_o: group_rows_bf16(do16, b, kvh, group, 0, nq),
            k: k16,
            v: v16,
        }),
        _ => None,
    };
    let mut ka = vec![0f32; nk * d];
    let mut va = Vec::new();
    load_rows(k, b, kvh, 0, nk, &mut ka);
    if bf16_ops.is_none() {
        va.resize(nk * d, 0f32);
        load_rows(v, b, kvh, 0, nk, &mut va);
    }
    let mut dka = vec![0f32; nk * d];
    let mut dva = vec![0f32; nk * d];

    let bq = q_tile(group);
    let mut p = vec![0f32; bq * group * BK];
    let mut dp = vec![0f32; bq * group * BK];
    for i0 in (0..nq).step_by(bq) {
        let i1 = (i0 + bq).min(nq);
        let rows = (i1 - i0) * group;
        let rr = i0 * group * d..i1 * group * d;
        let (qb, dob) = (&qa[rr.clone()], &doa[rr.clone()]);
        let (lo, hi) = key_span(vis, b, i0, i1);
        for j0 in (lo / BK * BK..hi).step_by(BK) {
            let j1 = (j0 + BK).min(nk);
            let class = vis.tile(b, i0, i1, j0, j1);
            if class == Tile::Hidden {
                continue;
            }
            let bk = j1 - j0;
            let kr = &ka[j0 * d..j1 * d];
            let p = &mut p[..rows * bk];
            let dp = &mut dp[..rows * bk];
            // P = exp(Q K^T - lse)
            match &bf16_ops {
                Some(ops) => gemm_seq(
                    MatRef::row_major(&ops.q[rr.clone()], rows, d),
                    ops.k.rows(b, kvh, j0, j1).t(),
                    p,
                    bk,
                    scale,
                    0.0,
                ),
                None => gemm_seq(
                    MatRef::row_major(qb, rows, d),
                    MatRef::row_major(kr, bk, d).t(),
                    p,
                    bk,
                    1.0,
                    0.0,
                ),
            }
            for (r, prow) in p.chunks_exact_mut(bk).enumerate() {
                probs_row(prow, lse[i0 * group + r]);
            }
            if class == Tile::Partial {
                mask_tile(p, vis, b, i0, group, j0, bk, 0.0);
            }
            // dV += P^T dO
            gemm_seq(
                MatRef::row_major(p, rows, bk).t(),
                MatRef::row_major(dob, rows, d),
                &mut dva[j0 * d..j1 * d],
                d,
                1.0,
                1.0,
            );
            // dP = dO V^T, then dS = P (dP - delta)
            match &bf16_ops {
                Some(ops) => gemm_seq(
                    MatRef::row_major(&ops.d_o[rr.clone()], rows, d),
                    ops.v.rows(b, kvh, j0, j1).t(),
                    dp,
                    bk,
                    1.0,
                    0.0,
                ),
                None => gemm_seq(
                    MatRef::row_major(dob, rows, d),
                    MatRef::row_major(&va[j0 * d..j1 * d], bk, d).t(),
                    dp,
                    bk,
                    1.0,
                    0.0,
                ),
            }
            for (r, (dprow, prow)) in dp.chunks_exact_mut(bk).zip(p.chunks_exact(bk)).enumerate() {
                softmax_grad_row(dprow, prow, delta[i0 * group + r]);
            }
            // dQ += scale dS K ; dK += dS^T (scale Q)
            gemm_seq(
                MatRef::row_major(dp, rows, bk),
                MatRef::row_major(kr, bk, d),
                &mut dqa[rr.clone()],
                d,
                scale,
                1.0,
            );
            gemm_seq(
                MatRef::row_major(dp, rows, bk).t(),
                MatRef::row_major(qb, rows, d),
                &mut dka[j0 * d..j1 * d],
                d,
                1.0,
                1.0,
            );
        }
    }
    // dq_out is [group heads, t, d]; dqa rows are (t, g).
    for t in 0..nq {
        for g in 0..group {
            let r = t * group + g;
            T::store(
                &dqa[r * d..(r + 1) * d],
                &mut dq_out[(g * nq + t) * d..][..d],
            );
        }
    }
    T::store(&dka, dk_out);
    T::store(&dva, dv_out);
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
    /// Scores to probabilities given the row's log-sum-exp (`+inf`: no visible key, all 0).
    fn probs_row(s: &mut [f32], lse: f32) {
        for x in s {
            *x = exp(*x - lse);
        }
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
