//! The small memory-bound ops of the inference path (residual add, RMSNorm, embedding
//! gather, dtype widening), as plain loops.
//!
//! A decode step's few rows are cheap enough single-threaded that handing them to a pool
//! costs more than it saves (candle's own elementwise ops wake its spinning "barrier
//! pool" for each one; a quarter of prefill time once went to that). A prefill step's
//! hundreds of rows are not: run on the calling thread while the pool's other worker
//! spins, RMSNorm and the residual adds took ~2% of a 16-stream serving run. From
//! [`PARALLEL_MIN_ROWS`] rows they split by rows over the same pool as the products
//! (`kubeswift_kernels::cpu::par`); each row is computed by the same code either way, so
//! the bits do not depend on the split.

use candle_core::{CpuStorage, Device, Storage, Tensor};
use half::{bf16, f16};

use kubeswift_kernels::cpu::par;

use super::storage::with_f32_slice;
use crate::model::error::{ModelError, Result};

/// Rows from which the row-wise ops run on the thread pool (a prompt's prefill, not a
/// decode step's handful).
const PARALLEL_MIN_ROWS: usize = 64;

/// A new `len`-element buffer of `width`-wide rows, filled by `f(start, rows)` with
/// `rows` the elements from `start` (whole rows): in one call on the calling thread for
/// a few rows, split by rows over the pool for many.
fn fill_rows(len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; len];
    let rows = len / width.max(1);
    if rows < PARALLEL_MIN_ROWS || par::threads() == 1 {
        f(0, &mut out);
        return out;
    }
    let per_task = par::rows_per_task(rows, PARALLEL_MIN_ROWS / 4) * width;
    par::for_each_chunk_mut(&mut out, per_task, |i, piece| f(i * per_task, piece));
    out
}

/// `a + b`, same shape, f32.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(ModelError::Input(format!(
            "add: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let width = a.dims().last().copied().unwrap_or(1);
    let out = with_f32_slice(&a, |a| {
        with_f32_slice(&b, |b| {
            fill_rows(a.len(), width, |start, out| {
                let end = start + out.len();
                for ((o, x), y) in out.iter_mut().zip(&a[start..end]).zip(&b[start..end]) {
                    *o = x + y;
                }
            })
        })
    })??;
    Ok(Tensor::from_vec(out, a.dims(), &Device::Cpu)?)
}

/// RMSNorm of every row of `x` (f32 `[.., H]`) with weight `[H]`, computed in f32 as
/// transformers does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = to_f32_vec(weight)?;
    let h = w.len();
    if x.dims().last() != Some(&h) {
        return Err(ModelError::Input(format!(
            "rms_norm: input {:?}, weight [{h}]",
            x.dims()
        )));
    }
    let out = with_f32_slice(&x, |xs| {
        fill_rows(xs.len(), h, |start, out| {
            let rows = &xs[start..start + out.len()];
            for (row, out) in rows.chunks(h).zip(out.chunks_mut(h)) {
                let mean = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
                let r = 1.0 / (mean + eps as f32).sqrt();
                for ((o, v), wi) in out.iter_mut().zip(row).zip(&w) {
                    *o = v * r * wi;
                }
            }
        })
    })?;
    Ok(Tensor::from_vec(out, x.dims(), &Device::Cpu)?)
}

/// Rows `ids` of `table` (`[V, H]`, any float dtype) as f32 `[ids, H]`.
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (v, h) = table.dims2()?;
    let (storage, layout) = table.storage_and_layout();
    let Some((start, _)) = layout.contiguous_offsets() else {
        return Err(ModelError::Input(
            "embedding table is not contiguous".into(),
        ));
    };
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let id = id as usize;
        if id >= v {
            return Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary ({v})"
            )));
        }
        let row = start + id * h..start + (id + 1) * h;
        match &*storage {
            Storage::Cpu(CpuStorage::F32(t)) => out.extend_from_slice(&t[row]),
            Storage::Cpu(CpuStorage::BF16(t)) => out.extend(t[row].iter().map(|x| x.to_f32())),
            Storage::Cpu(CpuStorage::F16(t)) => out.extend(t[row].iter().map(|x| x.to_f32())),
            _ => {
                return Err(ModelError::Input(format!(
                    "embedding: dtype {:?} is not supported",
                    table.dtype()
                )));
            }
        }
    }
    drop(storage);
    Ok(Tensor::from_vec(out, (ids.len(), h), &Device::Cpu)?)
}

/// A float tensor's elements widened to f32 (a copy).
pub fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Err(ModelError::Input("tensor is not contiguous".into()));
    };
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v[a..b].to_vec(),
        Storage::Cpu(CpuStorage::BF16(v)) => widen(&v[a..b], bf16::to_f32),
        Storage::Cpu(CpuStorage::F16(v)) => widen(&v[a..b], f16::to_f32),
        _ => {
            return Err(ModelError::Input(format!(
                "dtype {:?} is not a float type",
                t.dtype()
            )));
        }
    })
}

fn widen<T: Copy>(v: &[T], f: impl Fn(T) -> f32) -> Vec<f32> {
    v.iter().map(|&x| f(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let max = |a: Tensor, b: Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert_eq!(max(add(&x, &y).unwrap(), (&x + &y).unwrap()), 0.0);
        assert!(
            max(
                rms_norm(&x, &w, 1e-6).unwrap(),
                candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap()
            ) < 1e-5
        );
        let table = x.to_dtype(DType::BF16).unwrap();
        let rows = embedding(&table, &[2, 0]).unwrap();
        let want = table
            .index_select(&Tensor::new(&[2u32, 0], &dev).unwrap(), 0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(max(rows, want), 0.0);
        assert!(embedding(&table, &[3]).is_err());
    }

    #[test]
    fn many_rows_split_over_the_pool_give_each_row_its_bits_alone() {
        let dev = Device::Cpu;
        let rows = 3 * PARALLEL_MIN_ROWS + 5;
        let x = Tensor::randn(0f32, 1.0, (rows, 40), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (rows, 40), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 40, &dev).unwrap();
        let norm: Vec<Vec<f32>> = rms_norm(&x, &w, 1e-6).unwrap().to_vec2().unwrap();
        let sum: Vec<Vec<f32>> = add(&x, &y).unwrap().to_vec2().unwrap();
        for i in [0, PARALLEL_MIN_ROWS / 4 + 1, rows / 2, rows - 1] {
            let (xi, yi) = (x.narrow(0, i, 1).unwrap(), y.narrow(0, i, 1).unwrap());
            let alone: Vec<Vec<f32>> = rms_norm(&xi, &w, 1e-6).unwrap().to_vec2().unwrap();
            assert_eq!(alone[0], norm[i], "rms_norm row {i}");
            let alone: Vec<Vec<f32>> = add(&xi, &yi).unwrap().to_vec2().unwrap();
            assert_eq!(alone[0], sum[i], "add row {i}");
        }
        let want: Vec<Vec<f32>> = (&x + &y).unwrap().to_vec2().unwrap();
        assert_eq!(sum, want);
    }
}
