//! The small memory-bound ops of the inference path (residual add, RMSNorm, embedding
//! gather, dtype widening), as plain loops on the calling thread.
//!
//! They are cheap enough single-threaded that handing them to a pool costs more than it
//! saves (candle's own elementwise ops wake its spinning "barrier pool" for each one; a
//! quarter of prefill time once went to that). The products and attention around them do
//! run on that pool (`kubeswift_kernels::cpu::par`), one set of threads for every step.

use candle_core::{CpuStorage, Device, Storage, Tensor};
use half::{bf16, f16};

use super::storage::with_f32_slice;
use crate::model::error::{ModelError, Result};

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
    let out = with_f32_slice(&a, |a| {
        with_f32_slice(&b, |b| {
            a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<f32>>()
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
        let mut out = Vec::with_capacity(xs.len());
        for row in xs.chunks(h) {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
            let r = 1.0 / (mean + eps as f32).sqrt();
            out.extend(row.iter().zip(&w).map(|(v, wi)| v * r * wi));
        }
        out
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
}
