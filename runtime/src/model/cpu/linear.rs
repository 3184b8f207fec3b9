//! `y = x W^T + b` for inference: f32 activations, weights in their stored dtype.
//!
//! Few rows (decode: one row per running sequence) is one pass over the weight
//! (`kubeswift_kernels::cpu::rowdot`): each weight row is read once for all input rows,
//! split across threads by output column. The threads are candle's pool, as the GEMM's
//! (`kubeswift_kernels::cpu::par`): a serving step runs both, and two pools fight. Many rows (prefill) is compute-bound and goes to
//! the blocked GEMM of `kubeswift_kernels` (bf16/f16 weights are widened as it packs them,
//! so no f32 copy of a weight is ever held).
//! Every output element is a dot product computed the same way whatever the batch, so a
//! sequence's logits do not depend on which other sequences share its batch.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use kubeswift_kernels::cpu::gemm::{Elem, MatRef, gemm};
use kubeswift_kernels::cpu::par::SendPtr;
use kubeswift_kernels::cpu::{par, rowdot};

use super::elementwise::to_f32_vec;
use super::storage::{with_f32_slice, with_weight_slice};
use crate::model::error::{CandleContext, ModelError, Result};

/// Rows at or above which the gemm path wins over the streaming kernel.
const GEMM_MIN_ROWS: usize = 16;
/// Below this many weight elements one thread is faster than waking the pool.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// `x` `[.., in]` f32, `weight` `[out, in]`, `bias` `[out]` -> `[.., out]` f32.
///
/// `groups` splits the rows into sequences (lengths summing to the row count; empty means
/// one group). A long group goes through gemm on its own and short ones through the
/// streaming kernel, so each sequence's rows are computed by the same calls whatever else
/// is in the batch: batched and single-sequence generation agree bit for bit.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    groups: &[usize],
) -> Result<Tensor> {
    let (n, k) = weight.dims2().ctx("linear weight")?;
    let dims = x.dims().to_vec();
    let Some((&last, lead)) = dims.split_last() else {
        return Err(ModelError::Input("linear: input is a scalar".into()));
    };
    if last != k {
        return Err(ModelError::Input(format!(
            "linear: input has {last} features, weight expects {k}"
        )));
    }
    let m: usize = lead.iter().product();
    let whole = [m];
    let groups = if groups.is_empty() {
        &whole[..]
    } else {
        groups
    };
    if groups.iter().sum::<usize>() != m {
        return Err(ModelError::Input(format!(
            "linear: row groups {groups:?} do not cover {m} rows"
        )));
    }
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let mut y = vec![0f32; m * n];
    with_f32_slice(&x, |xs| {
        with_weight_slice(weight, |w| match w {
            WeightSlice::F32(w) => grouped_rows(xs, w, &mut y, groups, n, k),
            WeightSlice::BF16(w) => grouped_rows(xs, w, &mut y, groups, n, k),
            WeightSlice::F16(w) => grouped_rows(xs, w, &mut y, groups, n, k),
        })
    })??;
    if let Some(b) = bias {
        add_bias(&mut y, &to_f32_vec(b)?);
    }
    let out = Tensor::from_vec(y, (m, n), &Device::Cpu)?;
    let mut out_dims = lead.to_vec();
    out_dims.push(n);
    Ok(out.reshape(out_dims)?)
}

/// Several linear layers over the same input (q/k/v, gate/up) in one pass of the thread
/// pool, so a decode step pays the pool's wake-up once per group instead of once per
/// layer. Same numbers as calling [`linear`] on each; long groups simply do that.
pub fn linear_many(
    x: &Tensor,
    layers: &[(&Tensor, Option<&Tensor>)],
    groups: &[usize],
) -> Result<Vec<Tensor>> {
    let k = *x.dims().last().unwrap_or(&0);
    let m = x.elem_count() / k.max(1);
    let dtype = layers.first().map(|(w, _)| w.dtype());
    let uniform = layers
        .iter()
        .all(|(w, _)| Some(w.dtype()) == dtype && w.dims().get(1) == Some(&k));
    let short =
        groups.iter().all(|&g| g < GEMM_MIN_ROWS) && (!groups.is_empty() || m < GEMM_MIN_ROWS);
    if !uniform || !short || layers.len() < 2 {
        return layers
            .iter()
            .map(|(w, b)| linear(x, w, *b, groups))
            .collect();
    }
    let lead: Vec<usize> = x.dims()[..x.rank().saturating_sub(1)].to_vec();
    let x = x.to_dtype(DType::F32)?.contiguous()?.reshape((m, k))?;
    let widths: Vec<usize> = layers.iter().map(|(w, _)| w.dims()[0]).collect();
    let guards: Vec<_> = layers.iter().map(|(w, _)| w.storage_and_layout()).collect();
    let outs = with_f32_slice(&x, |xs| -> Result<Vec<Vec<f32>>> {
        macro_rules! run {
            ($variant:ident) => {{
                let mut ws = Vec::with_capacity(guards.len());
                for (storage, layout) in &guards {
                    match (&**storage, layout.contiguous_offsets()) {
                        (
                            candle_core::Storage::Cpu(candle_core::CpuStorage::$variant(v)),
                            Some((a, b)),
                        ) => ws.push(&v[a..b]),
                        _ => {
                            return Err(ModelError::Input(
                                "linear: weights must be contiguous CPU tensors".into(),
                            ));
                        }
                    }
                }
                Ok(stream_many(xs, &ws, &widths, m, k))
            }};
        }
        match dtype {
            Some(DType::F32) => run!(F32),
            Some(DType::BF16) => run!(BF16),
            Some(DType::F16) => run!(F16),
            other => Err(ModelError::Input(format!(
                "linear: weight dtype {other:?} is not supported"
            ))),
        }
    })??;
    drop(guards);
    outs.into_iter()
        .zip(layers)
        .map(|(mut y, (w, b))| {
            if let Some(b) = b {
                add_bias(&mut y, &to_f32_vec(b)?);
            }
            let out = Tensor::from_vec(y, (m, w.dims()[0]), &Device::Cpu)?;
            let dims: Vec<usize> = lead.iter().copied().chain([w.dims()[0]]).collect();
            Ok(out.reshape(dims)?)
        })
        .collect()
}

/// Column chunks of every weight, computed in one parallel pass; returns `[m, n_i]` each.
fn stream_many<T: Elem>(
    x: &[f32],
    ws: &[&[T]],
    widths: &[usize],
    m: usize,
    k: usize,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = widths.iter().map(|&n| vec![0f32; m * n]).collect();
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    stream_into(x, ws, &mut views, m, k);
    outs
}

/// `outs[i] = x W_i^T` (`[m, n_i]` each) for the weights `ws`, their columns split into
/// chunks spread over the pool; each task writes its columns of its output in place.
fn stream_into<T: Elem>(x: &[f32], ws: &[&[T]], outs: &mut [&mut [f32]], m: usize, k: usize) {
    let widths: Vec<usize> = ws.iter().map(|w| w.len() / k).collect();
    // The writes below go through raw pointers: the shapes are checked, not assumed.
    assert!(
        x.len() == m * k && outs.len() == ws.len(),
        "stream_into: x must be [{m}, {k}], one output per weight"
    );
    for (out, &n) in outs.iter().zip(&widths) {
        assert_eq!(
            out.len(),
            m * n,
            "stream_into: an output must be [{m}, {n}]"
        );
    }
    let total: usize = widths.iter().sum();
    let threads = par::threads();
    let chunk = if total * k < PARALLEL_MIN_ELEMS || threads == 1 {
        usize::MAX
    } else {
        rowdot::column_chunk(total, threads)
    };
    let tasks: Vec<(usize, usize, usize)> = widths
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            (0..n)
                .step_by(chunk.min(n.max(1)))
                .map(move |s| (i, s, (s.saturating_add(chunk)).min(n)))
        })
        .collect();
    let bases: Vec<SendPtr<f32>> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    par::for_each(tasks.len(), |t| {
        let (i, start, end) = tasks[t];
        // SAFETY: task `t` writes columns [start, end) of the `[m, widths[i]]` output `i`
        // (sizes checked above), borrowed mutably for the whole loop; tasks' column ranges
        // of one output are disjoint.
        unsafe {
            rowdot::rows_dot_strided(
                x,
                &ws[i][start * k..end * k],
                k,
                bases[i].ptr().add(start),
                widths[i],
            );
        }
    });
}

/// A weight's elements, borrowed from its storage.
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

/// `y = x W^T` group by group: the long groups (prompts being prefilled) through one call
/// of the blocked GEMM, runs of short ones (decoding sequences) each in one streaming pass
/// over the weight.
///
/// One GEMM for every prompt of the step instead of one per prompt: each call packs the
/// whole weight, so sixteen prompts in a step paid sixteen passes over it. Only prompts
/// separated by decoding rows are gathered into one block (and scattered back). The GEMM
/// computes each row of C from that row of A alone (fixed depth blocking, one FMA chain
/// per element), so a prompt's rows are the same bits whichever other prompts share the
/// call.
fn grouped_rows<T: Elem>(x: &[f32], w: &[T], y: &mut [f32], groups: &[usize], n: usize, k: usize) {
    let mut long: Vec<std::ops::Range<usize>> = Vec::new();
    let mut row = 0;
    let mut i = 0;
    while i < groups.len() {
        let mut rows = groups[i];
        i += 1;
        if rows >= GEMM_MIN_ROWS {
            // Prompts next to each other are already one block of rows: a prefill-only
            // step then needs no gather and scatter (they were ~2% of a 16-stream run).
            match long.last_mut() {
                Some(last) if last.end == row => last.end = row + rows,
                _ => long.push(row..row + rows),
            }
        } else {
            while i < groups.len() && groups[i] < GEMM_MIN_ROWS {
                rows += groups[i];
                i += 1;
            }
            let (xs, out) = (
                &x[row * k..(row + rows) * k],
                &mut y[row * n..(row + rows) * n],
            );
            stream_into(xs, &[w], &mut [out], rows, k);
        }
        row += rows;
    }
    let gemm_rows = |x: &[f32], rows: usize, out: &mut [f32]| {
        let a = MatRef::row_major(x, rows, k);
        gemm(a, MatRef::row_major(w, n, k).t(), out, n, 1.0, 0.0);
    };
    match long.as_slice() {
        [] => {}
        [only] => gemm_rows(
            &x[only.start * k..only.end * k],
            only.len(),
            &mut y[only.start * n..only.end * n],
        ),
        spans => {
            // Gather the prompts' rows, one product, scatter the results back.
            let total: usize = spans.iter().map(|r| r.len()).sum();
            let mut xs = Vec::with_capacity(total * k);
            for r in spans {
                xs.extend_from_slice(&x[r.start * k..r.end * k]);
            }
            let mut out = vec![0f32; total * n];
            gemm_rows(&xs, total, &mut out);
            let mut at = 0;
            for r in spans {
                y[r.start * n..r.end * n].copy_from_slice(&out[at * n..(at + r.len()) * n]);
                at += r.len();
            }
        }
    }
}

/// Adds `bias` (`[n]`) to every row of `y` (`[m, n]`).
fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let y = x
            .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap();
        match b {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        }
    }

    #[test]
    fn matches_matmul_for_every_row_count_dtype_and_bias() {
        let dev = Device::Cpu;
        for (n, k) in [(5, 3), (300, 67), (1030, 64)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            for m in [1, 2, 3, 9, 17] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                for dtype in [DType::F32, DType::BF16, DType::F16] {
                    let wd = w.to_dtype(dtype).unwrap();
                    for bias in [None, Some(&b)] {
                        let got = linear(&x, &wd, bias, &[]).unwrap();
                        let want = reference(&x, &wd, bias);
                        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                        let diff: f32 = diff.to_scalar().unwrap();
                        assert!(diff < 1e-3, "n={n} k={k} m={m} {dtype:?}: {diff}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (257, 96), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 96), &dev).unwrap();
        let batch: Vec<Vec<f32>> = linear(&x, &w, None, &[]).unwrap().to_vec2().unwrap();
        for (i, row) in batch.iter().enumerate() {
            let alone: Vec<Vec<f32>> = linear(&x.narrow(0, i, 1).unwrap(), &w, None, &[])
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(&alone[0], row);
        }
        // A long sequence next to short ones: its rows equal the sequence computed alone.
        let long = Tensor::randn(0f32, 1.0, (20, 96), &dev).unwrap();
        let mixed = Tensor::cat(
            &[
                &x.narrow(0, 0, 2).unwrap(),
                &long,
                &x.narrow(0, 2, 3).unwrap(),
            ],
            0,
        )
        .unwrap();
        let got: Vec<Vec<f32>> = linear(&mixed, &w, None, &[1, 1, 20, 3])
            .unwrap()
            .to_vec2()
            .unwrap();
        let alone: Vec<Vec<f32>> = linear(&long, &w, None, &[20]).unwrap().to_vec2().unwrap();
        assert_eq!(&got[2..22], &alone[..]);
        assert_eq!(&got[..2], &batch[..2]);
        // Two prompts share one GEMM call: each still equals itself alone.
        let other = Tensor::randn(0f32, 1.0, (17, 96), &dev).unwrap();
        let both = Tensor::cat(&[&long, &x.narrow(0, 0, 1).unwrap(), &other], 0).unwrap();
        let got: Vec<Vec<f32>> = linear(&both, &w, None, &[20, 1, 17])
            .unwrap()
            .to_vec2()
            .unwrap();
        let other_alone: Vec<Vec<f32>> =
            linear(&other, &w, None, &[17]).unwrap().to_vec2().unwrap();
        assert_eq!(&got[..20], &alone[..]);
        assert_eq!(&got[20], &batch[0]);
        assert_eq!(&got[21..], &other_alone[..]);
        // Adjacent prompts are one block of rows for the GEMM (no gather): the same bits.
        let adjacent = Tensor::cat(&[&long, &other], 0).unwrap();
        let got: Vec<Vec<f32>> = linear(&adjacent, &w, None, &[20, 17])
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(&got[..20], &alone[..]);
        assert_eq!(&got[20..], &other_alone[..]);
    }

    #[test]
    fn many_layers_at_once_give_the_same_bits_as_one_by_one() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 96), &dev).unwrap();
        let ws: Vec<Tensor> = [600, 5, 130]
            .iter()
            .map(|&n| {
                Tensor::randn(0f32, 1.0, (n, 96), &dev)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            })
            .collect();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let layers = [(&ws[0], None), (&ws[1], Some(&b)), (&ws[2], None)];
        let many = linear_many(&x, &layers, &[1, 2]).unwrap();
        for (got, (w, b)) in many.iter().zip(layers) {
            let want = linear(&x, w, b, &[1, 2]).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn keeps_leading_dims() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap();
        assert_eq!(linear(&x, &w, None, &[]).unwrap().dims(), &[2, 3, 4]);
    }
}
