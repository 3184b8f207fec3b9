//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w` over the last dimension.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::multiversion::multiversion;
use crate::cpu::par;
use crate::elem::Elem;
use crate::error::shape_err;
use crate::ops::{from_f32_vec, to_f32_vec};
use crate::storage::{check_float, contiguous_range, floats, owned, with_floats};

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
        let d = w1 - w0;
        let mut w = vec![0f32; d];
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
        let d = w.dim(0)?;
        let xf = to_f32_vec(OP, "x", x)?;
        let wf = to_f32_vec(OP, "w", w)?;
        let gf = to_f32_vec(OP, "grad", grad)?;
        let (dx, dw) = backward(&xf, &wf, &gf, self.eps, x.track_op(), w.track_op());
        let dx = dx.map(|v| from_f32_vec(v, x.dims(), x)).transpose()?;
        let dw = dw.map(|v| from_f32_vec(v, &[d], w)).transpose()?;
        Ok((dx, dw))
    }
}

fn forward<T: Elem>(x: &[T], w: &[f32], eps: f32) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::from_f32(0.0); x.len()];
    if d == 0 {
        return out;
    }
    let chunk = par::rows_per_task(x.len() / d, 8) * d;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(out, x)| {
            let mut xf = vec![0f32; d];
            let mut yf = vec![0f32; d];
            for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                T::load(xr, &mut xf);
                normalize_row(&xf, w, eps, &mut yf);
                T::store(&yf, o);
            }
        });
    out
}

/// Returns `(dx, dw)` for the rows of `x` (f32, row length `w.len()`), each only if asked.
fn backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let d = w.len();
    if d == 0 {
        return (want_dx.then(Vec::new), want_dw.then(Vec::new));
    }
    let chunk = par::rows_per_task(x.len() / d, 8) * d;
    let mut dx = vec![0f32; if want_dx { x.len() } else { 0 }];
    let dw_sum = |x: &[f32], g: &[f32], dx: Option<&mut [f32]>| {
        let mut dw = vec![0f32; if want_dw { d } else { 0 }];
        let mut scratch = vec![0f32; d];
        let mut dx = dx;
        for (r, (xr, gr)) in x.chunks_exact(d).zip(g.chunks_exact(d)).enumerate() {
            let dxr = match dx.as_deref_mut() {
                Some(dx) => &mut dx[r * d..(r + 1) * d],
                None => &mut scratch[..],
            };
            backward_row(xr, w, gr, eps, dxr, &mut dw, want_dw);
        }
        dw
    };
    let partial: Vec<Vec<f32>> = if want_dx {
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dx, (x, g))| dw_sum(x, g, Some(dx)))
            .collect()
    } else {
        x.par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .map(|(x, g)| dw_sum(x, g, None))
            .collect()
    };
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
