//! `y = x W^T + b` for inference: f32 activations, weights in their stored dtype.
//!
//! Few rows (decode: one row per running sequence) is a memory-bound pass over the weight:
//! each weight row is read once for all input rows, split across threads by output column.
//! Many rows (prefill) is compute-bound and goes to the gemm candle uses, on f32 weights
//! (bf16/f16 weights are widened block by block, so no full f32 copy is ever held).
//! Every output element is a dot product computed the same way whatever the batch, so a
//! sequence's logits do not depend on which other sequences share its batch.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::WeightElem;
use super::storage::{with_f32_slice, with_weight_slice};
use crate::model::error::{CandleContext, ModelError, Result};

/// Rows at or above which the gemm path wins over the streaming kernel.
const GEMM_MIN_ROWS: usize = 16;
/// Below this many weight elements one thread is faster than waking the pool.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;
/// Weight rows widened to f32 at a time on the gemm path (bounds the scratch memory).
const GEMM_BLOCK_ROWS: usize = 1024;

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
    let x = x.to_dtype(DType::F32)?.contiguous()?.reshape((m, k))?;
    let mut y = vec![0f32; m * n];
    let mut row = 0;
    let mut i = 0;
    while i < groups.len() {
        if groups[i] >= GEMM_MIN_ROWS {
            let rows = groups[i];
            let block = gemm_path(&x.narrow(0, row, rows)?, weight, n)?;
            let block: Vec<f32> = block.flatten_all()?.to_vec1()?;
            y[row * n..(row + rows) * n].copy_from_slice(&block);
            row += rows;
            i += 1;
            continue;
        }
        // A run of short groups: one streaming pass over the weight for all their rows.
        let mut rows = 0;
        while i < groups.len() && groups[i] < GEMM_MIN_ROWS {
            rows += groups[i];
            i += 1;
        }
        let out = &mut y[row * n..(row + rows) * n];
        let xs = x.narrow(0, row, rows)?.contiguous()?;
        with_f32_slice(&xs, |xs| {
            with_weight_slice(weight, |w| match w {
                WeightSlice::F32(w) => stream_rows(xs, w, out, rows, n, k),
                WeightSlice::BF16(w) => stream_rows(xs, w, out, rows, n, k),
                WeightSlice::F16(w) => stream_rows(xs, w, out, rows, n, k),
            })
        })??;
        row += rows;
    }
    let out = Tensor::from_vec(y, (m, n), &Device::Cpu)?;
    let out = match bias {
        Some(b) => out.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => out,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(n);
    Ok(out.reshape(out_dims)?)
}

/// A weight's elements, borrowed from its storage.
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

fn gemm_path(x: &Tensor, weight: &Tensor, n: usize) -> Result<Tensor> {
    if weight.dtype() == DType::F32 {
        return Ok(x.matmul(&weight.t()?)?);
    }
    let mut blocks = Vec::with_capacity(n.div_ceil(GEMM_BLOCK_ROWS));
    for start in (0..n).step_by(GEMM_BLOCK_ROWS) {
        let rows = GEMM_BLOCK_ROWS.min(n - start);
        let w = weight.narrow(0, start, rows)?.to_dtype(DType::F32)?;
        blocks.push(x.matmul(&w.t()?)?);
    }
    Ok(Tensor::cat(&blocks, 1)?)
}

/// Output columns `[start, end)` of `y` (`m` rows of `n`), computed from weight rows.
fn stream_cols<T: WeightElem>(
    x: &[f32],
    w: &[T],
    m: usize,
    k: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
) {
    // `out` is the [m, end - start] block, row-major.
    let width = end - start;
    let mut c = start;
    while c < end {
        let r = if end - c >= 4 && m <= 2 { 4 } else { 1 };
        let w_rows = &w[c * k..(c + r) * k];
        let mut row = 0;
        while row < m {
            let g = (m - row).min(8);
            let xr = &x[row * k..(row + g) * k];
            macro_rules! block {
                ($r:literal, $g:literal) => {{
                    let acc = T::dot_block::<$r, $g>(xr, w_rows, k);
                    for (mi, accs) in acc.iter().enumerate() {
                        for (ri, v) in accs.iter().enumerate() {
                            out[(row + mi) * width + (c - start) + ri] = *v;
                        }
                    }
                }};
            }
            match (r, g) {
                (4, 1) => block!(4, 1),
                (4, 2) => block!(4, 2),
                (1, 1) => block!(1, 1),
                (1, 2) => block!(1, 2),
                (1, 3) => block!(1, 3),
                (1, 4) => block!(1, 4),
                (1, 5) => block!(1, 5),
                (1, 6) => block!(1, 6),
                (1, 7) => block!(1, 7),
                _ => block!(1, 8),
            }
            row += g;
        }
        c += r;
    }
}

fn stream_rows<T: WeightElem>(x: &[f32], w: &[T], y: &mut [f32], m: usize, n: usize, k: usize) {
    let threads = rayon::current_num_threads();
    if n * k < PARALLEL_MIN_ELEMS || threads == 1 {
        stream_cols(x, w, m, k, 0, n, y);
        return;
    }
    // Column chunks, a multiple of 4 wide, a few per thread for balance.
    let chunk = n.div_ceil(threads * 4).next_multiple_of(4).max(4);
    let blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let end = (start + chunk).min(n);
            let mut out = vec![0f32; m * (end - start)];
            stream_cols(x, w, m, k, start, end, &mut out);
            (start, out)
        })
        .collect();
    for (start, block) in blocks {
        let width = block.len() / m;
        for row in 0..m {
            y[row * n + start..row * n + start + width]
                .copy_from_slice(&block[row * width..(row + 1) * width]);
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
    }

    #[test]
    fn keeps_leading_dims() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap();
        assert_eq!(linear(&x, &w, None, &[]).unwrap().dims(), &[2, 3, 4]);
    }
}
