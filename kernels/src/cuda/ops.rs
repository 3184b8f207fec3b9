//! The CUDA ops: candle `CustomOp`s whose `cuda_fwd` launches a kernel of `kernels.cu`, and
//! whose backward is another launch. The public functions in `crate::ops` validate shapes
//! once for both devices and call these when the input lives on a GPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::function;
use super::launch::{
    alloc, device, dim_u32, elementwise, launched, per_row, row_threads, view, with_float_type,
    wrap, zeros,
};
use crate::error::KernelError;

/// `cpu_fwd` of a CUDA-only op: the public functions never send CPU tensors here.
fn cpu_unreachable(op: &'static str) -> candle_core::Error {
    KernelError::Device {
        op,
        arg: "input",
        device: "the CPU (this is the op's CUDA version)".to_string(),
    }
    .into()
}

/// The `cpu_fwd` of a CUDA-only op with 2 or 3 inputs (an error naming the op).
macro_rules! cuda_only_cpu_fwd {
    (2) => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(cpu_unreachable(self.name()))
        }
    };
    (3) => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(cpu_unreachable(self.name()))
        }
    };
}

/// A device pointer argument that is absent (the kernel skips that output).
const NULL: u64 = 0;

// ---- RMSNorm -----------------------------------------------------------------------------

const RMS: &str = "rms_norm";

/// [`crate::rms_norm`] on CUDA; `x`, `w` validated by the caller.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    // The weight enters the kernel as f32 (bf16/f16 weights are converted once; the
    // conversion is differentiable, so the weight's gradient comes back in its dtype).
    let w32 = w.to_dtype(DType::F32)?.contiguous()?;
    x.contiguous()?.apply_op2(&w32, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

/// Which gradient a [`RmsNormBwd`] launch produces.
#[derive(Clone, Copy, PartialEq)]
enum RmsPart {
    Dx,
    Dw,
}

struct RmsNormBwd {
    eps: f32,
    part: RmsPart,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        RMS
    }

    cuda_only_cpu_fwd!(2);

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = device(xs);
        let d = wl.shape().elem_count();
        let n = xl.shape().elem_count();
        let d32 = dim_u32("hidden", d)?;
        let func = function(&dev, "rms_norm_fwd", xs.dtype())?;
        let w = view::<f32>(RMS, "w", ws, wl)?;
        let stream = dev.cuda_stream();
        with_float_type!(xs.dtype(), RMS, T => {
            let x = view::<T>(RMS, "x", xs, xl)?;
            let mut y = alloc::<T>(&dev, n)?;
            {
                let mut b = stream.launch_builder(&func);
                b.arg(&x).arg(&w).arg(&mut y).arg(&d32).arg(&self.eps);
                // SAFETY: argument types and order match rms_norm_fwd_<dtype> in kernels.cu;
                // one block per row of d elements, all inside x and y.
                launched("rms_norm_fwd", unsafe { b.launch(per_row(n / d.max(1), row_threads(d))?) })?;
            }
            Ok((wrap(y, &dev), xl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w32: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(x.dtype())?.contiguous()?;
        let part = |part| {
            x.apply_op3_no_bwd(
                w32,
                &grad,
                &RmsNormBwd {
                    eps: self.eps,
                    part,
                },
            )
        };
        let dx = if x.track_op() {
            Some(part(RmsPart::Dx)?)
        } else {
            None
        };
        let dw = if w32.track_op() {
            Some(part(RmsPart::Dw)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "rms_norm_bwd"
    }

    cuda_only_cpu_fwd!(3);

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = device(xs);
        let d = wl.shape().elem_count();
        let n = xl.shape().elem_count();
        let d32 = dim_u32("hidden", d)?;
        let func = function(&dev, "rms_norm_bwd", xs.dtype())?;
        let w = view::<f32>(RMS, "w", ws, wl)?;
        let stream = dev.cuda_stream();
        let cfg = per_row(n / d.max(1), row_threads(d))?;
        with_float_type!(xs.dtype(), RMS, T => {
            let x = view::<T>(RMS, "x", xs, xl)?;
            let g = view::<T>(RMS, "grad", gs, gl)?;
            match self.part {
                RmsPart::Dx => {
                    let mut dx = alloc::<T>(&dev, n)?;
                    {
                        let mut b = stream.launch_builder(&func);
                        b.arg(&x).arg(&w).arg(&g).arg(&mut dx).arg(&NULL).arg(&d32).arg(&self.eps);
                        // SAFETY: matches rms_norm_bwd_<dtype>; dw is null (skipped).
                        launched("rms_norm_bwd", unsafe { b.launch(cfg) })?;
                    }
                    Ok((wrap(dx, &dev), xl.shape().clone()))
                }
                RmsPart::Dw => {
                    // Every row adds its contribution atomically: start from zeros.
                    let mut dw = zeros::<f32>(&dev, d)?;
                    {
                        let mut b = stream.launch_builder(&func);
                        b.arg(&x).arg(&w).arg(&g).arg(&NULL).arg(&mut dw).arg(&d32).arg(&self.eps);
                        // SAFETY: matches rms_norm_bwd_<dtype>; dx is null (skipped).
                        launched("rms_norm_bwd", unsafe { b.launch(cfg) })?;
                    }
                    Ok((wrap(dw, &dev), wl.shape().clone()))
                }
            }
        })
    }
}

// ---- silu(gate) * up -----------------------------------------------------------------------

const SILU: &str = "silu_mul";

/// [`crate::silu_mul`] on CUDA; shapes and dtypes validated by the caller.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

/// Both gradients in one launch: the output is `[2, n]`, `dgate` then `dup`.
struct SiluMulBwd;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        SILU
    }

    cuda_only_cpu_fwd!(2);

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        us: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = device(gs);
        let n = gl.shape().elem_count();
        let func = function(&dev, "silu_mul_fwd", gs.dtype())?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        with_float_type!(gs.dtype(), SILU, T => {
            let g = view::<T>(SILU, "gate", gs, gl)?;
            let u = view::<T>(SILU, "up", us, ul)?;
            let mut out = alloc::<T>(&dev, n)?;
            {
                let mut b = stream.launch_builder(&func);
                b.arg(&g).arg(&u).arg(&mut out).arg(&n64);
                // SAFETY: matches silu_mul_fwd_<dtype>; grid-stride over n elements.
                launched("silu_mul_fwd", unsafe { b.launch(elementwise(n)) })?;
            }
            Ok((wrap(out, &dev), gl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(gate.dtype())?.contiguous()?;
        let both = gate.apply_op3_no_bwd(up, &grad, &SiluMulBwd)?;
        let dgate = both.get(0)?.reshape(gate.shape())?;
        let dup = both.get(1)?.reshape(up.shape())?;
        Ok((Some(dgate), Some(dup)))
    }
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "silu_mul_bwd"
    }

    cuda_only_cpu_fwd!(3);

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        us: &CudaStorage,
        ul: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = device(gs);
        let n = gl.shape().elem_count();
        let func = function(&dev, "silu_mul_bwd", gs.dtype())?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        with_float_type!(gs.dtype(), SILU, T => {
            let g = view::<T>(SILU, "gate", gs, gl)?;
            let u = view::<T>(SILU, "up", us, ul)?;
            let dy = view::<T>(SILU, "grad", ds, dl)?;
            let mut out = alloc::<T>(&dev, 2 * n)?;
            {
                let (mut dgate, mut dup) = out.split_at_mut(n);
                let mut b = stream.launch_builder(&func);
                b.arg(&g).arg(&u).arg(&dy).arg(&mut dgate).arg(&mut dup).arg(&n64);
                // SAFETY: matches silu_mul_bwd_<dtype>; both halves hold n elements.
                launched("silu_mul_bwd", unsafe { b.launch(elementwise(n)) })?;
            }
            Ok((wrap(out, &dev), Shape::from((2, n))))
        })
    }
}

// ---- rotary embedding ----------------------------------------------------------------------

const ROPE: &str = "rope";

/// [`crate::rope`] on CUDA: `x` `[b, h, t, d]`; `rows` are the validated table rows of
/// each token (`b*t` of them when positions are per batch, else `t`).
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rows: &[u32],
    per_batch: bool,
) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let idx = Tensor::from_slice(rows, rows.len(), x.device())?;
    let gather = |table: &Tensor| -> Result<Tensor> {
        table
            .to_dtype(DType::F32)?
            .index_select(&idx, 0)?
            .contiguous()
    };
    let (c, s) = (gather(cos)?.detach(), gather(sin)?.detach());
    let op = Rope {
        dims: [
            dim_u32("batch", b)?,
            dim_u32("heads", h)?,
            dim_u32("seq", t)?,
            dim_u32("head_dim", d)?,
        ],
        per_batch,
        sign: 1.0,
    };
    x.contiguous()?.apply_op3(&c, &s, op)
}

#[derive(Clone, Copy)]
struct Rope {
    dims: [u32; 4],
    per_batch: bool,
    /// +1: rotate by the position's angle (forward); -1: by its opposite (backward).
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        ROPE
    }

    cuda_only_cpu_fwd!(3);

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        cs: &CudaStorage,
        cl: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = device(xs);
        let n = xl.shape().elem_count();
        let func = function(&dev, "rope", xs.dtype())?;
        let stream = dev.cuda_stream();
        let cos = view::<f32>(ROPE, "cos", cs, cl)?;
        let sin = view::<f32>(ROPE, "sin", ss, sl)?;
        let [b, h, t, d] = self.dims;
        let per_batch = u32::from(self.per_batch);
        with_float_type!(xs.dtype(), ROPE, T => {
            let x = view::<T>(ROPE, "x", xs, xl)?;
            let mut y = alloc::<T>(&dev, n)?;
            {
                let mut a = stream.launch_builder(&func);
                a.arg(&x).arg(&cos).arg(&sin).arg(&mut y);
                a.arg(&b).arg(&h).arg(&t).arg(&d).arg(&per_batch).arg(&self.sign);
                // SAFETY: matches rope_<dtype>; each thread writes one (j, j + d/2) pair.
                launched("rope", unsafe { a.launch(elementwise(n / 2)) })?;
            }
            Ok((wrap(y, &dev), xl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = Rope {
            sign: -self.sign,
            ..*self
        };
        let dx = grad
            .to_dtype(x.dtype())?
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(dx), None, None))
    }
}
