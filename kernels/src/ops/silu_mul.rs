//! The SiLU-gated MLP product `silu(gate) * up` (SwiGLU's activation).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu::math::sigmoid;
use crate::cpu::multiversion::multiversion;
use crate::cpu::par;
use crate::elem::Elem;
use crate::error::{KernelError, shape_err};
use crate::ops::tensor_from;
use crate::storage::{Floats, check_float, contiguous_range, floats, owned, with_tensor_floats};

const OP: &str = "silu_mul";
/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;
/// Elements widened to f32 at a time: the f32 copies stay in L1 (the whole task's chunk in
/// f32 buffers went through L2, and zero-filling them was a memset per task).
const BLOCK: usize = 512;

/// `silu(gate) * up`, elementwise; `gate` and `up` have the same shape and dtype.
/// Differentiable in both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_float(OP, "gate", gate)?;
    check_float(OP, "up", up)?;
    if gate.shape() != up.shape() {
        return Err(shape_err(
            OP,
            "up",
            up.shape(),
            format!("{:?} (gate's shape)", gate.dims()),
        ));
    }
    if gate.dtype() != up.dtype() {
        return Err(KernelError::DType {
            op: OP,
            arg: "up",
            got: up.dtype(),
            expected: "gate's dtype",
        }
        .into());
    }
    #[cfg(feature = "cuda")]
    if gate.device().is_cuda() {
        return crate::cuda::ops::silu_mul(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g0, g1) = contiguous_range(OP, "gate", gl)?;
        let (u0, u1) = contiguous_range(OP, "up", ul)?;
        let out = match (floats(OP, "gate", gs)?, floats(OP, "up", us)?) {
            (Floats::F32(g), Floats::F32(u)) => owned(forward(&g[g0..g1], &u[u0..u1])),
            (Floats::BF16(g), Floats::BF16(u)) => owned(forward(&g[g0..g1], &u[u0..u1])),
            (Floats::F16(g), Floats::F16(u)) => owned(forward(&g[g0..g1], &u[u0..u1])),
            _ => {
                return Err(KernelError::DType {
                    op: OP,
                    arg: "up",
                    got: us.dtype(),
                    expected: "gate's dtype",
                }
                .into());
            }
        };
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dgate, dup) = with_tensor_floats!(OP, "gate", gate, g => {
            with_tensor_floats!(OP, "up", up, u => {
                with_tensor_floats!(OP, "grad", &grad, d => {
                    let (dg, du) = backward(g, u, d);
                    Ok((owned(dg), owned(du)))
                })
            })
        })?;
        Ok((
            Some(tensor_from(dgate, gate.shape())),
            Some(tensor_from(dup, up.shape())),
        ))
    }
}

fn forward<T: Elem>(gate: &[T], up: &[T]) -> Vec<T> {
    let n = gate.len();
    let mut out = Vec::with_capacity(n);
    par::for_each_chunk_mut(&mut out.spare_capacity_mut()[..n], CHUNK, |i, o| {
        let (mut gf, mut uf, mut yf) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
        for (j, o) in o.chunks_mut(BLOCK).enumerate() {
            let range = i * CHUNK + j * BLOCK..i * CHUNK + j * BLOCK + o.len();
            let y = &mut yf[..o.len()];
            forward_chunk(
                T::widen(&gate[range.clone()], &mut gf),
                T::widen(&up[range], &mut uf),
                y,
            );
            T::store_uninit(y, o);
        }
    });
    // SAFETY: the chunks cover 0..n and each block of each chunk was written above.
    unsafe { out.set_len(n) };
    out
}

/// `(d_gate, d_up)` in the inputs' types (`gate` and `up` share one; `d` is the output's).
fn backward<T: Elem, U: Elem, D: Elem>(gate: &[T], up: &[U], d: &[D]) -> (Vec<T>, Vec<U>) {
    let n = gate.len();
    let mut dgate = Vec::with_capacity(n);
    let mut dup = Vec::<U>::with_capacity(n);
    let dup_ptr = par::SendPtr(dup.spare_capacity_mut().as_mut_ptr());
    par::for_each_chunk_mut(&mut dgate.spare_capacity_mut()[..n], CHUNK, |i, dg| {
        let (mut gf, mut uf, mut df) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
        let (mut dgf, mut duf) = ([0f32; BLOCK], [0f32; BLOCK]);
        for (j, dg) in dg.chunks_mut(BLOCK).enumerate() {
            let range = i * CHUNK + j * BLOCK..i * CHUNK + j * BLOCK + dg.len();
            let len = dg.len();
            let (g, u) = (&mut dgf[..len], &mut duf[..len]);
            backward_chunk(
                T::widen(&gate[range.clone()], &mut gf),
                U::widen(&up[range.clone()], &mut uf),
                D::widen(&d[range.clone()], &mut df),
                g,
                u,
            );
            T::store_uninit(g, dg);
            // SAFETY: this range of `dup` is written only by this task and lies inside its
            // capacity (n elements).
            let du = unsafe { std::slice::from_raw_parts_mut(dup_ptr.ptr().add(range.start), len) };
            U::store_uninit(u, du);
        }
    });
    // SAFETY: the chunks cover 0..n, and every block wrote its range of both vectors.
    unsafe {
        dgate.set_len(n);
        dup.set_len(n);
    }
    (dgate, dup)
}

multiversion! {
    /// `y[i] = silu(gate[i]) * up[i]`.
    fn forward_chunk(gate: &[f32], up: &[f32], y: &mut [f32]) {
        for ((y, u), g) in y.iter_mut().zip(up).zip(gate) {
            *y = u * (g * sigmoid(*g));
        }
    }
}

multiversion! {
    /// With `s = sigmoid(g)`: `d_gate = d * u * s (1 + g (1 - s))`, `d_up = d * g * s`.
    fn backward_chunk(gate: &[f32], up: &[f32], d: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
        for ((((dg, du), g), u), d) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(gate).zip(up).zip(d) {
            let s = sigmoid(*g);
            *du = d * *g * s;
            *dg = d * *u * s * (1.0 + *g * (1.0 - s));
        }
    }
}
