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
/// Elements per parallel task (and per f32 scratch buffer).
const CHUNK: usize = 16 * 1024;

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
    let mut out = vec![T::from_f32(0.0); gate.len()];
    par::for_each_chunk_mut(&mut out, CHUNK, |i, o| {
        let range = i * CHUNK..i * CHUNK + o.len();
        let mut gf = vec![0f32; o.len()];
        let mut uf = vec![0f32; o.len()];
        T::load(&gate[range.clone()], &mut gf);
        T::load(&up[range], &mut uf);
        forward_chunk(&gf, &mut uf);
        T::store(&uf, o);
    });
    out
}

/// `(d_gate, d_up)` in the inputs' types (`gate` and `up` share one; `d` is the output's).
fn backward<T: Elem, U: Elem, D: Elem>(gate: &[T], up: &[U], d: &[D]) -> (Vec<T>, Vec<U>) {
    let mut dgate = vec![T::from_f32(0.0); gate.len()];
    let mut dup = vec![U::from_f32(0.0); gate.len()];
    let dup_ptr = par::SendPtr(dup.as_mut_ptr());
    par::for_each_chunk_mut(&mut dgate, CHUNK, |i, dg| {
        let range = i * CHUNK..i * CHUNK + dg.len();
        let n = dg.len();
        let (mut gf, mut uf, mut df) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        T::load(&gate[range.clone()], &mut gf);
        U::load(&up[range.clone()], &mut uf);
        D::load(&d[range.clone()], &mut df);
        // In place: gf becomes d_gate, uf becomes d_up.
        backward_chunk(&mut gf, &mut uf, &df);
        T::store(&gf, dg);
        // SAFETY: chunk i's range of `dup` is written only by this task and lies inside it
        // (`dup` has gate.len() elements).
        let du = unsafe { std::slice::from_raw_parts_mut(dup_ptr.ptr().add(range.start), n) };
        U::store(&uf, du);
    });
    (dgate, dup)
}

multiversion! {
    /// `up[i] = silu(gate[i]) * up[i]`.
    fn forward_chunk(gate: &[f32], up: &mut [f32]) {
        for (u, g) in up.iter_mut().zip(gate) {
            *u *= g * sigmoid(*g);
        }
    }
}

multiversion! {
    /// With `s = sigmoid(g)`: `d_gate = d * u * s (1 + g (1 - s))`, `d_up = d * g * s`;
    /// written over `gate` and `up`.
    fn backward_chunk(gate: &mut [f32], up: &mut [f32], d: &[f32]) {
        for ((g, u), d) in gate.iter_mut().zip(up.iter_mut()).zip(d) {
            let s = sigmoid(*g);
            let du = d * *g * s;
            *g = d * *u * s * (1.0 + *g * (1.0 - s));
            *u = du;
        }
    }
}
