//! Rotary position embedding, half-rotation (`rotate_half`) convention of Qwen2/Llama.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use crate::cpu::multiversion::multiversion;
use crate::cpu::par::{self, SendPtr};
use crate::elem::Elem;
use crate::error::{shape_err, value_err};
use crate::storage::{
    check_float, dense_strides, floats, follow_order, ints, ordered_shape, owned, unorder,
    with_cpu, with_floats,
};

const OP: &str = "rope";

/// `cos`/`sin` tables `[max_positions, head_dim / 2]` (f32) for the given inverse
/// frequencies (`inv_freq[i] = theta^(-2i/head_dim)`, or a scaled variant such as Llama 3's,
/// which the model computes).
pub fn rope_tables(
    inv_freq: &[f32],
    max_positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for p in 0..max_positions {
        for f in inv_freq {
            // Angles in f64 like transformers' f32 matmul of positions x inv_freq would lose
            // precision at large positions; f64 keeps the table exact to f32 rounding.
            let angle = p as f64 * *f as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (max_positions, half), device)?,
        Tensor::from_vec(sin, (max_positions, half), device)?,
    ))
}

/// Rotates `x` (`[batch, heads, seq, head_dim]`) by the angles of `positions`:
/// with `x = [x1, x2]` split in halves, `y = [x1 cos - x2 sin, x2 cos + x1 sin]`, the
/// table row taken at each token's position.
///
/// * `cos`, `sin`: `[max_positions, head_dim / 2]` (see [`rope_tables`]).
/// * `positions`: integer `[batch, seq]` or `[seq]` (shared by the batch). Explicit
///   positions let packed sequences restart at 0 per sample and decode steps start at the
///   KV-cache length.
///
/// `x` may be a strided view (e.g. `transpose(1, 2)` of a projection's `[b, t, h, d]`
/// output): the result keeps `x`'s memory order, so transposing it back is free.
/// Differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    check_float(OP, "x", x)?;
    check_float(OP, "cos", cos)?;
    check_float(OP, "sin", sin)?;
    let (b, _h, t, d) = x
        .dims4()
        .map_err(|_| shape_err(OP, "x", x.shape(), "[batch, heads, seq, head_dim]"))?;
    if d % 2 != 0 {
        return Err(shape_err(OP, "x", x.shape(), "an even head_dim"));
    }
    let half = d / 2;
    let (max_pos, table_half) = cos
        .dims2()
        .map_err(|_| shape_err(OP, "cos", cos.shape(), format!("[max_positions, {half}]")))?;
    if table_half != half {
        return Err(shape_err(
            OP,
            "cos",
            cos.shape(),
            format!("[max_positions, {half}]"),
        ));
    }
    if sin.dims() != cos.dims() {
        return Err(shape_err(
            OP,
            "sin",
            sin.shape(),
            format!("{:?} (cos's shape)", cos.dims()),
        ));
    }
    let pos_dims = positions.dims();
    if pos_dims != [b, t] && pos_dims != [t] {
        return Err(shape_err(
            OP,
            "positions",
            positions.shape(),
            format!("[{b}, {t}] or [{t}]"),
        ));
    }
    let pos = ints(OP, "positions", positions)?;
    let mut rows = Vec::with_capacity(pos.len());
    for &p in &pos {
        if p < 0 || p as usize >= max_pos {
            return Err(value_err(
                OP,
                "positions",
                format!("position {p} outside the rope table's 0..{max_pos}"),
            ));
        }
        rows.push(p as usize);
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        // rows < max_pos, which indexes a table that fits in memory: u32 is enough.
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        return crate::cuda::ops::rope(x, cos, sin, &rows, pos_dims.len() == 2);
    }
    let tables = Arc::new(Tables {
        cos: gather(&cos.to_dtype(DType::F32)?, &rows, half)?,
        sin: gather(&sin.to_dtype(DType::F32)?, &rows, half)?,
        per_batch: pos_dims.len() == 2,
        seq: t,
    });
    let x = if x.stride()[3] == 1 {
        x.clone()
    } else {
        x.contiguous()?
    };
    let (order, _) = follow_order(x.layout());
    let out = x.apply_op1(Rope {
        tables,
        order,
        sign: 1.0,
    })?;
    out.permute(unorder(order))
}

/// Table rows at the tokens' positions, `[tokens, half]`.
fn gather(table: &Tensor, rows: &[usize], half: usize) -> Result<Vec<f32>> {
    let table = table.contiguous()?;
    with_cpu(OP, "cos", &table, |storage, layout| {
        let data = match floats(OP, "cos", storage)? {
            crate::storage::Floats::F32(s) => &s[layout.start_offset()..],
            _ => return Err(value_err(OP, "cos", "table not converted to f32")),
        };
        let mut out = Vec::with_capacity(rows.len() * half);
        for &r in rows {
            out.extend_from_slice(&data[r * half..(r + 1) * half]);
        }
        Ok(out)
    })
}

/// cos/sin rows for each token: `[batch * seq, half]`, or `[seq, half]` when shared.
struct Tables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    per_batch: bool,
    seq: usize,
}

impl Tables {
    fn row(&self, b: usize, t: usize) -> usize {
        if self.per_batch { b * self.seq + t } else { t }
    }
}

struct Rope {
    tables: Arc<Tables>,
    /// Memory order of the output (that of the input).
    order: [usize; 4],
    /// +1 rotates forward; -1 rotates back (the backward, since the rotation is orthogonal).
    sign: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims: [usize; 4] = [l.dims()[0], l.dims()[1], l.dims()[2], l.dims()[3]];
        let out_strides = dense_strides(self.order, &dims);
        let strides = [l.stride()[0], l.stride()[1], l.stride()[2], l.stride()[3]];
        let out = with_floats!(floats(OP, "x", s)?, x => owned(rotate(
            &x[l.start_offset()..],
            strides,
            dims,
            out_strides,
            &self.tables,
            self.sign,
        )));
        Ok((out, ordered_shape(l.dims(), self.order)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // `grad` has the output's memory-ordered shape; view it in logical order and rotate
        // it back into `x`'s memory order (the forward's), so that the `transpose` that
        // made `x` from a projection's `[b, t, h, d]` output is undone for free on the way
        // back instead of by a strided copy.
        let grad = grad.permute(unorder(self.order))?;
        let grad = if grad.stride()[3] == 1 {
            grad
        } else {
            grad.contiguous()?
        };
        let back = Rope {
            tables: self.tables.clone(),
            order: self.order,
            sign: -1.0,
        };
        let dx = grad.apply_op1_no_bwd(&back)?.permute(unorder(self.order))?;
        let dx = if dx.dtype() == x.dtype() {
            dx
        } else {
            dx.to_dtype(x.dtype())?
        };
        Ok(Some(dx))
    }
}

fn rotate<T: Elem>(
    x: &[T],
    xs: [usize; 4],
    dims: [usize; 4],
    os: [usize; 4],
    tables: &Tables,
    sign: f32,
) -> Vec<T> {
    let [nb, nh, nt, d] = dims;
    let half = d / 2;
    let n = nb * nh * nt * d;
    // Not zeroed first: the steps below write every element (a zeroing pass was ~0.5% of an
    // f32 training step across rope and attention).
    let mut out = Vec::with_capacity(n);
    let out_ptr = SendPtr(out.spare_capacity_mut().as_mut_ptr());
    // Heads next to each other in both buffers (heads made by `transpose(1, 2)` of a
    // projection's `[b, t, h, d]` output, and this op's output in that order): a task step
    // is one token, all its heads one run of `nh * d` elements sharing the token's table
    // row, read and written in memory order. Walking one head's positions instead jumped a
    // whole token (4 KiB for 16 heads of 64) per 256-byte row, a stride the hardware
    // prefetchers do not follow across pages, and paid a call and two copies per row.
    let heads_adjacent = xs[1] == d && os[1] == d;
    let (outer, run_heads) = if heads_adjacent {
        (nb * nt, nh)
    } else {
        (nb * nh, 1)
    };
    // Ranges of tasks, so a thread sets up its run buffers once per range, not per token.
    par::for_each_owned_range(outer, |tasks| {
        let mut xf = vec![0f32; run_heads * d];
        let mut yf = vec![0f32; run_heads * d];
        // (b, t) of one step of this task, and where its run starts in x and in out.
        let mut step = |b: usize, t: usize, src: usize, dst: usize| {
            let r = tables.row(b, t);
            rotate_heads(
                T::widen(&x[src..][..run_heads * d], &mut xf),
                &tables.cos[r * half..(r + 1) * half],
                &tables.sin[r * half..(r + 1) * half],
                sign,
                &mut yf,
            );
            // SAFETY: each (b, h, t) row of `d` elements is written by exactly one task
            // step (a step owns a token's heads, or one (b, h, t) row); runs lie inside
            // `out` because `os` are the strides of a dense `dims` buffer with the head
            // dim innermost (and heads adjacent when a run has several).
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(dst), yf.len()) };
            T::store_uninit(&yf, dst);
        };
        for task in tasks {
            if heads_adjacent {
                let (b, t) = (task / nt, task % nt);
                step(b, t, b * xs[0] + t * xs[2], b * os[0] + t * os[2]);
            } else {
                let (b, h) = (task / nh, task % nh);
                for t in 0..nt {
                    let src = b * xs[0] + h * xs[1] + t * xs[2];
                    step(b, t, src, b * os[0] + h * os[1] + t * os[2]);
                }
            }
        }
    });
    // SAFETY: the tasks' steps wrote all nb * nh * nt rows of d elements, which are the
    // dense buffer's n elements.
    unsafe { out.set_len(n) };
    out
}

multiversion! {
    /// `y = [x1 c - s x2, x2 c + s x1]` with `s = sign * sin`, for each head-dim row of `x`
    /// (one token's heads share `cos` and `sin`).
    fn rotate_heads(x: &[f32], cos: &[f32], sin: &[f32], sign: f32, y: &mut [f32]) {
        let half = cos.len();
        for (x, y) in x.chunks_exact(2 * half).zip(y.chunks_exact_mut(2 * half)) {
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            for i in 0..half {
                let (c, s) = (cos[i], sign * sin[i]);
                y1[i] = x1[i] * c - x2[i] * s;
                y2[i] = x2[i] * c + x1[i] * s;
            }
        }
    }
}
