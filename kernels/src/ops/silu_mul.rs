//! The SiLU-gated MLP product `silu(gate) * up` (SwiGLU's activation).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::math::sigmoid;
use crate::cpu::multiversion::multiversion;
use crate::elem::Elem;
use crate::error::{KernelError, shape_err};
use crate::ops::{from_f32_vec, to_f32_vec};
use crate::storage::{Floats, check_float, contiguous_range, floats, owned};

const OP: &str = "silu_mul";
/// Elements per rayon task (and per f32 scratch buffer).
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
        let gf = to_f32_vec(OP, "gate", gate)?;
        let uf = to_f32_vec(OP, "up", up)?;
        let df = to_f32_vec(OP, "grad", grad)?;
        let mut dgate = vec![0f32; gf.len()];
        let mut dup = vec![0f32; gf.len()];
        dgate
            .par_chunks_mut(CHUNK)
            .zip(dup.par_chunks_mut(CHUNK))
            .zip(gf.par_chunks(CHUNK).zip(uf.par_chunks(CHUNK)))
            .zip(df.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), d)| backward_chunk(g, u, d, dg, du));
        let dgate = from_f32_vec(dgate, gate.dims(), gate)?;
        let dup = from_f32_vec(dup, up.dims(), up)?;
        Ok((Some(dgate), Some(dup)))
    }
}

fn forward<T: Elem>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::from_f32(0.0); gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            let mut gf = vec![0f32; g.len()];
            let mut uf = vec![0f32; g.len()];
            T::load(g, &mut gf);
            T::load(u, &mut uf);
            forward_chunk(&gf, &mut uf);
            T::store(&uf, o);
        });
    out
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
    /// With `s = sigmoid(g)`: `d_gate = d * u * s (1 + g (1 - s))`, `d_up = d * g * s`.
    fn backward_chunk(gate: &[f32], up: &[f32], d: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for ((((dg, du), g), u), d) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(d) {
            let s = sigmoid(*g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}
