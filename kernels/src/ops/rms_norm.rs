//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w` over the last dimension.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu::multiversion::multiversion;
use crate::cpu::par;
use crate::elem::Elem;
use crate::error::shape_err;
use crate::ops::to_f32_vec;
use crate::storage::{
    check_float, contiguous_range, floats, owned, with_floats, with_tensor_floats,
};

const OP: &str = "rms_norm";

/// RMSNorm over the last dimension of `x` with weight `w` (`[hidden]`), as Qwen2/Llama's
/// `RMSNorm`: the statistics and the scaling are computed in f32 and rounded once to `x`'s
/// dtype (Hugging Face rounds the normalised value to the input dtype before multiplying
/// by the weight; the difference is below bf16 resolution).
///
/// Differentiable in `x` and `w`; `w` may have another float dtype than `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    check_float(OP, "x", x)?;
    check_float(OP, "w", w)?;
    let hidden = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [hidden] {
        return Err(shape_err(
            OP,
            "w",
            w.shape(),
            format!("[{hidden}] (x's last dim)"),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::cuda::ops::rms_norm(x, w, eps);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x0, x1) = contiguous_range(OP, "x", xl)?;
        let (w0, w1) = contiguous_range(OP, "w", wl)?;
        let mut w = vec![0f32; w1 - w0];
        with_floats!(floats(OP, "w", ws)?, s => Elem::load(&s[w0..w1], &mut w));
        let out = with_floats!(floats(OP, "x", xs)?, s => owned(forward(&s[x0..x1], &w, self.eps)));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let wf = to_f32_vec(OP, "w", w)?;
        let grad = grad.contiguous()?;
        let (want_dx, want_dw) = (x.track_op(), w.track_op());
        let (dx, dw) = with_tensor_floats!(OP, "x", x, xs => {
            with_tensor_floats!(OP, "grad", &grad, gs => {
                let (dx, dw) = backward(xs, &wf, gs, self.eps, want_dx, want_dw);
                Ok((dx.map(owned), dw))
            })
        })?;
        let dx = dx.map(|s| crate::ops::tensor_from(s, x.shape()));
        let dw = match dw {
            Some(v) => Some(crate::ops::from_f32_vec(v, w.dims(), w)?),
            None => None,
        };
        Ok((dx, dw))
    }
}

fn forward<T: Elem>(x: &[T], w: &[f32], eps: f32) -> Vec<T> {
    let d = w.len();
    if d == 0 {
        return vec![T::from_f32(0.0); x.len()];
    }
    // Written into uninitialised capacity: zero-filling the MBs of an activation first was a
    // pass of its own.
    let n = x.len() / d * d;
    let mut out = Vec::with_capacity(n);
    let chunk = par::rows_per_task(x.len() / d, 8) * d;
    par::for_each_chunk_mut(&mut out.spare_capacity_mut()[..n], chunk, |i, out| {
        let x = &x[i * chunk..i * chunk + out.len()];
        let mut xf = vec![0f32; d];
        let mut yf = vec![0f32; d];
        for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            normalize_row(T::widen(xr, &mut xf), w, eps, &mut yf);
            T::store_uninit(&yf, o);
        }
    });
    // SAFETY: the chunks (whole rows, `chunk` a multiple of d) cover 0..n and every row of
    // each was written above.
    unsafe { out.set_len(n) };
    out
}

/// Returns `(dx, dw)` for the rows of `x` (row length `w.len()`), each only if asked.
fn backward<TX: Elem, TG: Elem>(
    x: &[TX],
    w: &[f32],
    g: &[TG],
    eps: f32,
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<TX>>, Option<Vec<f32>>) {
    let d = w.len();
    let rows = x.len() / d.max(1);
    if d == 0 {
        let dx = vec![TX::from_f32(0.0); x.len()];
        return (want_dx.then_some(dx), want_dw.then(Vec::new));
    }
    // Written into uninitialised capacity (every row below), not zero-filled first.
    let mut dx = Vec::<TX>::with_capacity(if want_dx { rows * d } else { 0 });
    let per_task = par::rows_per_task(rows, 8);
    let dx_ptr = par::SendPtr(dx.spare_capacity_mut().as_mut_ptr());
    let partial: Vec<Vec<f32>> = par::map(rows.div_ceil(per_task), |task| {
        let (r0, r1) = (task * per_task, ((task + 1) * per_task).min(rows));
        let mut dw = vec![0f32; if want_dw { d } else { 0 }];
        let (mut xf, mut gf, mut dxf) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
        for r in r0..r1 {
            let xr = TX::widen(&x[r * d..(r + 1) * d], &mut xf);
            let gr = TG::widen(&g[r * d..(r + 1) * d], &mut gf);
            backward_row(xr, w, gr, eps, &mut dxf, &mut dw, want_dw);
            if want_dx {
                // SAFETY: row r belongs to this task only (tasks own disjoint row ranges)
                // and lies inside `dx`'s capacity, rows * d elements when want_dx.
                let out = unsafe { std::slice::from_raw_parts_mut(dx_ptr.ptr().add(r * d), d) };
                TX::store_uninit(&dxf, out);
            }
        }
        dw
    });
    if want_dx {
        // SAFETY: the tasks cover rows 0..rows, and each wrote every one of its rows above.
        unsafe { dx.set_len(rows * d) };
    }
    let dw = want_dw.then(|| {
        let mut dw = vec![0f32; d];
        for p in &partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        dw
    });
    (want_dx.then_some(dx), dw)
}

multiversion! {
    /// `y = x * inv_rms(x) * w` for one row.
    fn normalize_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let inv = inv_rms(x, eps);
        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
            *y = x * inv * w;
        }
    }
}

multiversion! {
    /// One row of the backward: with `r = inv_rms(x)` and `n = x r`,
    /// `dx = r (w g - n mean(w g n))`, `dw += g n`.
    fn backward_row(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], want_dw: bool) {
        let inv = inv_rms(x, eps);
        let d = x.len() as f32;
        let mut dot = [0f32; 16];
        let (xc, xt) = x.as_chunks::<16>();
        let (wc, wt) = w.as_chunks::<16>();
        let (gc, gt) = g.as_chunks::<16>();
        for ((x, w), g) in xc.iter().zip(wc).zip(gc) {
            for i in 0..16 {
                dot[i] += w[i] * g[i] * x[i];
            }
        }
        let mut tail = 0f32;
        for ((x, w), g) in xt.iter().zip(wt).zip(gt) {
            tail += w * g * x;
        }
        let mean = (dot.iter().sum::<f32>() + tail) * inv / d;
        for (((dx, x), w), g) in dx.iter_mut().zip(x).zip(w).zip(g) {
            *dx = inv * (w * g - x * inv * mean);
        }
        if want_dw {
            for ((dw, x), g) in dw.iter_mut().zip(x).zip(g) {
                *dw += g * x * inv;
            }
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)`, summing in 16 lanes so the loop vectorises.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    let sum = acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}
