//! Linear layers with frozen weights: plain (`frozen_linear`) and with a LoRA adapter
//! (`lora_linear`). The backward never computes a gradient for the frozen weight or bias,
//! which is most of a plain matmul backward's work and memory in LoRA training.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, TensorId};

use crate::cpu::gemm::{COut, Epilogue, LowRank, MatRef, gemm_then_out};
use crate::cpu::thin;
use crate::elem::Elem;
use crate::error::{shape_err, value_err};
use crate::ops::packed_weights::{self, gemm_frozen_b};
use crate::ops::{f32_storage, product_output, tensor_from, zeros_output};
use crate::storage::{
    check_float, contiguous_range, floats, owned, with_cpu, with_floats, with_tensor_floats,
};

const FROZEN: &str = "frozen_linear";
const LORA: &str = "lora_linear";

/// `y = x W^T + b` for `x: [.., in]`, `w: [out, in]`, `b: [out]`, with `w` and `b` frozen:
/// only `x` gets a gradient. Output dtype is `x`'s; `w` may have another float dtype
/// (bf16 x bf16 uses the native bf16 GEMM where the CPU has it).
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    frozen_linear_with(x, w, b, Output::Value)
}

/// [`frozen_linear`] for a recomputation whose output is only differentiated, never read:
/// the backward is exact, but the forward skips the product and returns zeros.
///
/// Gradient checkpointing recomputes a decoder layer only to backpropagate through it.
/// The last projection of each half of the layer (`o_proj`, `down_proj`) feeds nothing
/// else in that half, so its value, a full `x W^T` product, would be computed and thrown
/// away.
pub fn frozen_linear_grad_only(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    frozen_linear_with(x, w, b, Output::GradOnly)
}

/// [`frozen_linear`] replayed for gradient checkpointing: `saved` is what this op returned
/// for the same `x` in the forward, and is returned again (copied) instead of being
/// recomputed; the backward is [`frozen_linear`]'s. Selective recomputation keeps each
/// product's output through the forward so that the backward's recomputation of a layer
/// redoes only the cheap work between the products.
pub fn frozen_linear_replay(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    saved: &Tensor,
) -> Result<Tensor> {
    frozen_linear_with(x, w, b, Output::Saved(saved.clone()))
}

fn frozen_linear_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    output: Output,
) -> Result<Tensor> {
    let frozen = Frozen::new(FROZEN, x, w, b)?;
    output.check(FROZEN, x, &frozen)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        // No fused CUDA kernel yet; `w` and `b` are detached, so only `x` gets a gradient.
        return crate::reference::linear(x, &frozen.w, frozen.b.as_ref());
    }
    x.contiguous()?.apply_op1(FrozenLinear { frozen, output })
}

/// What a linear op's forward computes.
#[derive(Clone, Debug)]
enum Output {
    /// The layer's output.
    Value,
    /// Zeros of the output's shape, plus whatever the backward needs: for a caller that
    /// only backpropagates through the result (see [`frozen_linear_grad_only`]).
    GradOnly,
    /// The output an earlier forward of the same op on the same input gave, plus whatever
    /// the backward needs (see [`frozen_linear_replay`]).
    Saved(Tensor),
}

impl Output {
    /// Whether the forward computes the layer's product.
    fn computes_value(&self) -> bool {
        matches!(self, Output::Value)
    }

    /// A saved output must be what the op would return: `x`'s dtype and leading dims,
    /// the layer's output width.
    fn check(&self, op: &'static str, x: &Tensor, frozen: &Frozen) -> Result<()> {
        let Output::Saved(saved) = self else {
            return Ok(());
        };
        check_float(op, "saved", saved)?;
        let expected = frozen.out_shape(x.layout());
        if saved.shape() != &expected || saved.dtype() != x.dtype() {
            return Err(shape_err(
                op,
                "saved",
                saved.shape(),
                format!(
                    "{expected:?} in {:?}, the output of this op for x",
                    x.dtype()
                ),
            ));
        }
        Ok(())
    }

    /// The saved output's values as a fresh storage (ops return owned storage).
    fn saved_storage(op: &'static str, saved: &Tensor) -> Result<CpuStorage> {
        with_tensor_floats!(op, "saved", saved, v => Ok(owned(v.to_vec())))
    }
}

/// `[cols, rows]` f32 from a row-major `[rows, cols]` of any float type (an adapter's
/// few-by-many matrices).
fn transpose_f32<T: Elem>(values: &[T], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    thin::transpose_into(values, rows, cols, &mut t);
    t
}

/// `values` as f32.
fn to_f32<T: Elem>(values: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    T::load(values, &mut out);
    out
}

/// LoRA dropout on the adapter's input, as PEFT's `lora_dropout`: each element of `x` is
/// kept with probability `1 - p` (and scaled by `1 / (1 - p)`), drawn from a hash of `seed`
/// and the element index so the backward regenerates the same mask without storing it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

/// `y = x W^T + b + scale * (x A^T) B^T` with `w: [out, in]` and `b` frozen and the
/// adapter `a: [r, in]`, `b_lora: [out, r]` trainable (PEFT's `lora_A`/`lora_B` layout;
/// `scale` is `alpha / r`, or `alpha / sqrt(r)` with rsLoRA). Gradients flow to `x`, `a`
/// and `b_lora`. Adapter weights may be f32 while `x`/`w` are bf16 (PEFT keeps adapters in
/// f32 by default).
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    lora_linear_with_dropout(x, w, b, a, b_lora, scale, None)
}

/// [`lora_linear`] with dropout on the adapter's input (training mode).
pub fn lora_linear_with_dropout(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
    dropout: Option<LoraDropout>,
) -> Result<Tensor> {
    lora_linear_with(x, w, b, a, b_lora, scale, dropout, Output::Value)
}

/// [`lora_linear_with_dropout`] whose output is only differentiated, never read (see
/// [`frozen_linear_grad_only`]): the forward computes only `dropout(x) A^T`, which the
/// backward needs for `B`'s gradient, and returns zeros.
pub fn lora_linear_grad_only(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
    dropout: Option<LoraDropout>,
) -> Result<Tensor> {
    lora_linear_with(x, w, b, a, b_lora, scale, dropout, Output::GradOnly)
}

/// [`lora_linear_with_dropout`] replayed for gradient checkpointing (see
/// [`frozen_linear_replay`]): `saved` is the op's output for the same `x`, `a`, `b_lora`
/// and dropout in the forward and is returned again; only `dropout(x) A^T`, which the
/// backward needs for `B`'s gradient, is recomputed.
#[allow(clippy::too_many_arguments)]
pub fn lora_linear_replay(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
    dropout: Option<LoraDropout>,
    saved: &Tensor,
) -> Result<Tensor> {
    lora_linear_with(
        x,
        w,
        b,
        a,
        b_lora,
        scale,
        dropout,
        Output::Saved(saved.clone()),
    )
}

#[allow(clippy::too_many_arguments)]
fn lora_linear_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    b_lora: &Tensor,
    scale: f64,
    dropout: Option<LoraDropout>,
    output: Output,
) -> Result<Tensor> {
    let frozen = Frozen::new(LORA, x, w, b)?;
    output.check(LORA, x, &frozen)?;
    check_float(LORA, "a", a)?;
    check_float(LORA, "b_lora", b_lora)?;
    let (r, a_in) = a
        .dims2()
        .map_err(|_| shape_err(LORA, "a", a.shape(), "[r, in]"))?;
    if a_in != frozen.inp {
        return Err(shape_err(
            LORA,
            "a",
            a.shape(),
            format!("[r, {}]", frozen.inp),
        ));
    }
    if b_lora.dims() != [frozen.out, r] {
        return Err(shape_err(
            LORA,
            "b_lora",
            b_lora.shape(),
            format!("[{}, {r}]", frozen.out),
        ));
    }
    if let Some(d) = dropout
        && !(0.0..1.0).contains(&d.p)
    {
        return Err(value_err(
            LORA,
            "dropout",
            format!("p = {} is not in [0, 1)", d.p),
        ));
    }
    let dropout = dropout.filter(|d| d.p > 0.0);
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return crate::cuda::fallback::lora_linear(
            x,
            &frozen.w,
            frozen.b.as_ref(),
            a,
            b_lora,
            scale,
            dropout,
        );
    }
    let op = LoraLinear {
        frozen,
        scale: scale as f32,
        dropout,
        output,
        xa: Arc::new(Mutex::new(None)),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b_lora.contiguous()?, op)
}

/// The frozen part of a linear layer, validated.
struct Frozen {
    w: Tensor,
    /// `w`'s id for the packed-weight cache (see `packed_weights`).
    cache_id: Option<TensorId>,
    b: Option<Tensor>,
    inp: usize,
    out: usize,
}

impl Frozen {
    fn new(op: &'static str, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Self> {
        check_float(op, "x", x)?;
        check_float(op, "w", w)?;
        let (out, inp) = w
            .dims2()
            .map_err(|_| shape_err(op, "w", w.shape(), "[out, in]"))?;
        let x_in = x.dim(candle_core::D::Minus1)?;
        if x_in != inp {
            return Err(shape_err(
                op,
                "x",
                x.shape(),
                format!("[.., {inp}] (w is [{out}, {inp}])"),
            ));
        }
        if let Some(b) = b {
            check_float(op, "b", b)?;
            if b.dims() != [out] {
                return Err(shape_err(op, "b", b.shape(), format!("[{out}]")));
            }
        }
        Ok(Frozen {
            cache_id: packed_weights::cache_id(w),
            w: w.contiguous()?.detach(),
            b: b.map(|b| b.contiguous().map(|b| b.detach())).transpose()?,
            inp,
            out,
        })
    }

    /// `c = x W^T + b` (f32, `[m, out]`) for the contiguous `[m, in]` rows of `x`, then
    /// `epilogue` (the bias is added by it, on each finished tile).
    fn forward<T: Elem>(
        &self,
        op: &'static str,
        x: &[T],
        c: COut<'_>,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let m = x.len() / self.inp.max(1);
        let bias = self
            .b
            .as_ref()
            .map(|b| crate::ops::to_f32_vec(op, "b", b))
            .transpose()?;
        let epilogue = match &bias {
            Some(bias) => epilogue.bias(bias),
            None => epilogue,
        };
        with_cpu(op, "w", &self.w, |ws, wl| {
            let (w0, w1) = contiguous_range(op, "w", wl)?;
            with_floats!(floats(op, "w", ws)?, w => {
                let wt = MatRef::row_major(&w[w0..w1], self.out, self.inp).t();
                gemm_then_out(MatRef::row_major(x, m, self.inp), wt, c, self.out, 1.0, 0.0, &epilogue);
            });
            Ok(())
        })
    }

    /// `dx = g W` for `g: [m, out]`, then `epilogue`.
    fn backward_x<T: Elem>(
        &self,
        op: &'static str,
        g: &[T],
        dx: COut<'_>,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let m = g.len() / self.out.max(1);
        with_cpu(op, "w", &self.w, |ws, wl| {
            let (w0, w1) = contiguous_range(op, "w", wl)?;
            with_floats!(floats(op, "w", ws)?, w => {
                let wm = MatRef::row_major(&w[w0..w1], self.out, self.inp);
                let gm = MatRef::row_major(g, m, self.out);
                gemm_frozen_b(self.cache_id, gm, wm, dx, self.inp, 1.0, 0.0, &epilogue);
            });
            Ok(())
        })
    }

    fn out_shape(&self, x: &Layout) -> Shape {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out;
        }
        Shape::from(dims)
    }
}

fn f32_tensor(values: Vec<f32>, shape: &Shape, like: &Tensor) -> Tensor {
    Tensor::from_storage(
        candle_core::Storage::Cpu(f32_storage(values, like.dtype())),
        shape.clone(),
        candle_core::op::BackpropOp::none(),
        false,
    )
}

struct FrozenLinear {
    frozen: Frozen,
    output: Output,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        FROZEN
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x0, x1) = contiguous_range(FROZEN, "x", xl)?;
        let m = (x1 - x0) / self.frozen.inp.max(1);
        if let Output::Saved(saved) = &self.output {
            return Ok((
                Output::saved_storage(FROZEN, saved)?,
                self.frozen.out_shape(xl),
            ));
        }
        let storage = if self.output.computes_value() {
            product_output(
                m,
                self.frozen.out,
                xs.dtype(),
                None,
                |c, epilogue| with_floats!(floats(FROZEN, "x", xs)?, x => self.frozen.forward(FROZEN, &x[x0..x1], c, epilogue)),
            )?
        } else {
            zeros_output(m * self.frozen.out, xs.dtype())
        };
        Ok((storage, self.frozen.out_shape(xl)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let m = grad.elem_count() / self.frozen.out.max(1);
        let dx = crate::ops::written_f32(
            m * self.frozen.inp,
            |dx| with_tensor_floats!(FROZEN, "grad", &grad, g => self.frozen.backward_x(FROZEN, g, dx, Epilogue::new(self.frozen.inp))),
        )?;
        Ok(Some(f32_tensor(dx, x.shape(), x)))
    }
}

struct LoraLinear {
    frozen: Frozen,
    scale: f32,
    dropout: Option<LoraDropout>,
    output: Output,
    /// `dropout(x) A^T` (`[m, r]`, f32) from the forward, reused by the backward for dB.
    xa: Arc<Mutex<Option<Arc<Vec<f32>>>>>,
}

impl LoraLinear {
    /// The adapter's input: `x` itself, or `dropout(x)` as f32.
    fn adapter_input<'a, T: Elem>(&self, x: &'a [T]) -> AdapterInput<'a, T> {
        match self.dropout {
            None => AdapterInput::Plain(x),
            Some(d) => {
                let mut xd = vec![0f32; x.len()];
                T::load(x, &mut xd);
                apply_dropout(&mut xd, d);
                AdapterInput::Dropped(xd)
            }
        }
    }
}

enum AdapterInput<'a, T> {
    Plain(&'a [T]),
    Dropped(Vec<f32>),
}

/// `x *= keep_mask / (1 - p)` with the mask drawn from `(seed, index)`.
fn apply_dropout(x: &mut [f32], d: LoraDropout) {
    let keep_scale = 1.0 / (1.0 - d.p);
    let threshold = drop_threshold(d);
    for (i, v) in x.iter_mut().enumerate() {
        *v = if dropped(d, threshold, i) {
            0.0
        } else {
            *v * keep_scale
        };
    }
}

/// The factor the LoRA kernel's dropout multiplies each of `n` elements by (0 or
/// `1 / (1 - p)`), for code that applies the same mask as a tensor (the CUDA fallback,
/// DoRA's base term).
pub fn dropout_factors(n: usize, d: LoraDropout) -> Vec<f32> {
    let keep_scale = 1.0 / (1.0 - d.p);
    let threshold = drop_threshold(d);
    (0..n)
        .map(|i| {
            if dropped(d, threshold, i) {
                0.0
            } else {
                keep_scale
            }
        })
        .collect()
}

/// Element `i` is dropped when the top 24 bits of its hash are below `p * 2^24`.
fn drop_threshold(d: LoraDropout) -> u64 {
    (d.p as f64 * (1u64 << 24) as f64) as u64
}

#[inline(always)]
fn dropped(d: LoraDropout, threshold: u64, i: usize) -> bool {
    splitmix64(d.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 40 < threshold
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        LORA
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (inp, out) = (self.frozen.inp, self.frozen.out);
        let (x0, x1) = contiguous_range(LORA, "x", xl)?;
        let (a0, a1) = contiguous_range(LORA, "a", al)?;
        let (b0, b1) = contiguous_range(LORA, "b_lora", bl)?;
        let m = (x1 - x0) / inp.max(1);
        let r = (a1 - a0) / inp.max(1);
        let mut xa = vec![0f32; m * r];
        // `dropout(x) A^T`, which the backward needs whatever the forward returns.
        let adapter_product = |xa: &mut [f32]| -> Result<()> {
            with_floats!(floats(LORA, "x", xs)?, x => {
                let x = &x[x0..x1];
                let a = with_floats!(floats(LORA, "a", as_)?, a => to_f32(&a[a0..a1]));
                match self.adapter_input(x) {
                    AdapterInput::Plain(x) => thin::xpt(x, &a, inp, xa),
                    AdapterInput::Dropped(xd) => thin::xpt(&xd, &a, inp, xa),
                }
            });
            Ok(())
        };
        let storage = match &self.output {
            // Replayed, the saved output stands in for the products.
            Output::Saved(saved) => {
                adapter_product(&mut xa)?;
                Output::saved_storage(LORA, saved)?
            }
            Output::GradOnly => {
                adapter_product(&mut xa)?;
                zeros_output(m * out, xs.dtype())
            }
            Output::Value => {
                adapter_product(&mut xa)?;
                let bt = with_floats!(floats(LORA, "b_lora", bs)?, b => transpose_f32(&b[b0..b1], out, r));
                let term = LowRank {
                    lhs: &xa,
                    p: &bt,
                    rank: r,
                    scale: self.scale,
                };
                product_output(
                    m,
                    out,
                    xs.dtype(),
                    Some(term),
                    |c, epilogue| with_floats!(floats(LORA, "x", xs)?, x => self.frozen.forward(LORA, &x[x0..x1], c, epilogue)),
                )?
            }
        };
        if let Ok(mut slot) = self.xa.lock() {
            *slot = Some(Arc::new(xa));
        }
        Ok((storage, self.frozen.out_shape(xl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (inp, out) = (self.frozen.inp, self.frozen.out);
        let r = a.dim(0)?;
        let grad = grad.contiguous()?;
        let m = grad.elem_count() / out.max(1);
        let xa = self
            .xa
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or_else(|| value_err(LORA, "x", "backward without a forward on the CPU"))?;
        // gb = g B: the gradient at the adapter's bottleneck, [m, r].
        let mut gb = vec![0f32; m * r];
        // B^T as f32 rows ([r, out]), so that g B is g's rows dotted with them.
        let bt = transpose_f32(&crate::ops::to_f32_vec(LORA, "b_lora", b)?, out, r);
        with_tensor_floats!(LORA, "grad", &grad, g => {
            thin::xpt(g, &bt, out, &mut gb);
            Ok(())
        })?;

        let dx = if x.track_op() {
            let aw = crate::ops::to_f32_vec(LORA, "a", a)?;
            match self.dropout {
                // `g W` into the output's f32 buffer (scratch for bf16: the GEMM writes every
                // element), the adapter's term added as it is rounded to x's dtype.
                None => {
                    let term = LowRank {
                        lhs: &gb,
                        p: &aw,
                        rank: r,
                        scale: self.scale,
                    };
                    let storage = product_output(
                        m,
                        inp,
                        x.dtype(),
                        Some(term),
                        |dx, epilogue| with_tensor_floats!(LORA, "grad", &grad, g => self.frozen.backward_x(LORA, g, dx, epilogue)),
                    )?;
                    Some(tensor_from(storage, x.shape()))
                }
                Some(d) => {
                    let mut dx = crate::ops::written_f32(
                        m * inp,
                        |dx| with_tensor_floats!(LORA, "grad", &grad, g => self.frozen.backward_x(LORA, g, dx, Epilogue::new(inp))),
                    )?;
                    let mut dxa = vec![0f32; m * inp];
                    thin::add_lp(&gb, &aw, inp, self.scale, &mut dxa);
                    apply_dropout(&mut dxa, d);
                    for (o, v) in dx.iter_mut().zip(&dxa) {
                        *o += v;
                    }
                    Some(f32_tensor(dx, x.shape(), x))
                }
            }
        } else {
            None
        };

        let da = if a.track_op() {
            // dA^T ([in, r]) is what the kernel stores; dA is its small transpose.
            let mut dat = vec![0f32; inp * r];
            with_tensor_floats!(LORA, "x", x, xv => {
                match self.adapter_input(xv) {
                    AdapterInput::Plain(xv) => thin::atb(xv, inp, &gb, r, self.scale, &mut dat),
                    AdapterInput::Dropped(xd) => thin::atb(&xd, inp, &gb, r, self.scale, &mut dat),
                }
                Ok(())
            })?;
            Some(f32_tensor(transpose_f32(&dat, inp, r), a.shape(), a))
        } else {
            None
        };

        let db = if b.track_op() {
            let mut db = vec![0f32; out * r];
            with_tensor_floats!(LORA, "grad", &grad, g => {
                thin::atb(g, out, &xa, r, self.scale, &mut db);
                Ok(())
            })?;
            Some(f32_tensor(db, b.shape(), b))
        } else {
            None
        };
        Ok((dx, da, db))
    }
}
