//! Scaled-dot-product attention with grouped-query heads and flash-style tiling.
//!
//! Layout: `q` is `[batch, n_heads, q_len, head_dim]`, `k` and `v` are
//! `[batch, n_kv_heads, kv_len, head_dim]` (candle-transformers' convention); query head `h`
//! uses KV head `h / (n_heads / n_kv_heads)`. Any strides are accepted as long as the head
//! dim is contiguous, so the `transpose(1, 2)` of a projection's `[b, t, h, d]` output needs
//! no copy. The output is `[batch, n_heads, q_len, head_dim]` stored in `q`'s memory order:
//! for a transposed `q` that is `[b, t, h, d]` in memory, so `transpose(1, 2)` + `reshape`
//! back to `[b, t, h * d]` is free.

mod cpu;
mod softmax;
mod visibility;

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::error::{KernelError, shape_err, value_err};
use crate::storage::{
    Floats, check_float, dense_strides, floats, follow_order, ints, ordered_shape, owned, unorder,
    with_cpu,
};
use cpu::View;
use visibility::{MaskSpec, Visibility};

const OP: &str = "attention";

/// Which keys each query may attend to.
///
/// Queries are the last `q_len` positions of the `kv_len` keys (query `i` sits at key
/// position `kv_len - q_len + i`), which covers training (`q_len == kv_len`), prefill after a
/// cached prefix and decode (`q_len == 1`).
#[derive(Clone, Debug, Default)]
pub struct AttnMask {
    /// A query sees only keys at or before its own position.
    pub causal: bool,
    /// `[batch, kv_len]` integer tensor, nonzero for real tokens and 0 for padding (left or
    /// right); padded keys are never attended to.
    pub key_padding: Option<Tensor>,
    /// `[batch, kv_len]` integer segment ids for packed batches: a query sees only keys of
    /// its own segment. Segments must be contiguous runs.
    pub segment_ids: Option<Tensor>,
    /// Sliding window: a query sees at most the `window` most recent keys (itself included).
    pub window: Option<usize>,
}

impl AttnMask {
    /// Plain causal attention.
    pub fn causal() -> Self {
        AttnMask {
            causal: true,
            ..Default::default()
        }
    }

    /// No masking at all (bidirectional).
    pub fn full() -> Self {
        AttnMask::default()
    }

    /// Adds a `[batch, kv_len]` key padding mask (nonzero = real token).
    pub fn with_key_padding(mut self, mask: Tensor) -> Self {
        self.key_padding = Some(mask);
        self
    }

    /// Adds `[batch, kv_len]` segment ids (packed sequences).
    pub fn with_segment_ids(mut self, ids: Tensor) -> Self {
        self.segment_ids = Some(ids);
        self
    }

    /// Adds a sliding window of `window` keys.
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Causal attention over one packed row described by flash-attention's `cu_seqlens`
    /// (`[0, len_0, len_0 + len_1, ..., total]`): batch 1, one segment per sample.
    pub fn packed_causal(cu_seqlens: &[usize], device: &Device) -> Result<Self> {
        let ids = segment_ids_from_cu_seqlens(cu_seqlens)?;
        let total = ids.len();
        Ok(AttnMask::causal().with_segment_ids(Tensor::from_vec(ids, (1, total), device)?))
    }

    fn spec(&self, batch: usize, kv_len: usize) -> Result<MaskSpec> {
        let per_key = |arg: &'static str, t: &Option<Tensor>| -> Result<Option<Vec<i64>>> {
            match t {
                None => Ok(None),
                Some(t) if t.dims() == [batch, kv_len] => Ok(Some(ints(OP, arg, t)?)),
                Some(t) => Err(shape_err(
                    OP,
                    arg,
                    t.shape(),
                    format!("[{batch}, {kv_len}]"),
                )),
            }
        };
        Ok(MaskSpec {
            causal: self.causal,
            key_padding: per_key("key_padding", &self.key_padding)?,
            segment_ids: per_key("segment_ids", &self.segment_ids)?,
            window: self.window,
        })
    }
}

/// Segment ids `[0, 0, .., 1, 1, ..]` from cumulative sequence lengths.
fn segment_ids_from_cu_seqlens(cu: &[usize]) -> Result<Vec<u32>> {
    if cu.first() != Some(&0) || cu.windows(2).any(|w| w[1] < w[0]) {
        return Err(value_err(
            OP,
            "cu_seqlens",
            format!("must start at 0 and never decrease, got {cu:?}"),
        ));
    }
    let mut ids = Vec::with_capacity(*cu.last().unwrap_or(&0));
    for (seg, w) in cu.windows(2).enumerate() {
        ids.extend(std::iter::repeat_n(seg as u32, w[1] - w[0]));
    }
    Ok(ids)
}

/// Attention with the default scale `1 / sqrt(head_dim)`. See the module docs for layouts.
///
/// Differentiable in `q`, `k` and `v`. Memory: the forward keeps one f32 log-sum-exp per
/// query row for the backward, never a `[q_len, kv_len]` matrix. A query that sees no key
/// (e.g. inside left padding) gets an output of zeros and zero gradients.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Tensor> {
    let d = q.dim(candle_core::D::Minus1)?;
    attention_with_scale(q, k, v, mask, 1.0 / (d as f64).sqrt())
}

/// [`attention`] with an explicit softmax scale.
pub fn attention_with_scale(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    check_float(OP, "q", q)?;
    check_float(OP, "k", k)?;
    check_float(OP, "v", v)?;
    let (b, h, tq, d) = q
        .dims4()
        .map_err(|_| shape_err(OP, "q", q.shape(), "[batch, n_heads, q_len, head_dim]"))?;
    let (kb, hkv, tk, kd) = k
        .dims4()
        .map_err(|_| shape_err(OP, "k", k.shape(), "[batch, n_kv_heads, kv_len, head_dim]"))?;
    if kb != b || kd != d || hkv == 0 || h % hkv != 0 {
        return Err(shape_err(
            OP,
            "k",
            k.shape(),
            format!("[{b}, n_kv_heads dividing {h}, kv_len, {d}]"),
        ));
    }
    if v.dims() != k.dims() {
        return Err(shape_err(
            OP,
            "v",
            v.shape(),
            format!("{:?} (k's shape)", k.dims()),
        ));
    }
    for (arg, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(KernelError::DType {
                op: OP,
                arg,
                got: t.dtype(),
                expected: "q's dtype",
            }
            .into());
        }
    }
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        // No fused CUDA kernel yet: the plain-candle version (cuda/fallback.rs says why).
        return crate::reference::attention(q, k, v, mask, scale);
    }
    let spec = mask.spec(b, tk)?;
    let vis =
        Visibility::resolve(&spec, b, tq, tk).map_err(|(arg, msg)| value_err(OP, arg, msg))?;
    let inner = |t: &Tensor| -> Result<Tensor> {
        if t.stride()[3] == 1 {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let (q, k, v) = (inner(q)?, inner(k)?, inner(v)?);
    let (order, _) = follow_order(q.layout());
    let op = Attention {
        vis: Arc::new(vis),
        scale: scale as f32,
        order,
        lse: Arc::new(Mutex::new(None)),
    };
    let out = q.apply_op3(&k, &v, op)?;
    out.permute(unorder(order))
}

struct Attention {
    vis: Arc<Visibility>,
    scale: f32,
    /// Memory order of the output (q's).
    order: [usize; 4],
    /// The forward's `[b, h, t]` log-sum-exp, kept for the backward.
    lse: Arc<Mutex<Option<Arc<Vec<f32>>>>>,
}

fn view<'a, T>(data: &'a [T], layout: &Layout) -> View<'a, T> {
    let dims = layout.dims();
    let s = layout.stride();
    View {
        data: &data[layout.start_offset()..],
        dims: [dims[0], dims[1], dims[2], dims[3]],
        strides: [s[0], s[1], s[2], s[3]],
    }
}

fn dtype_mismatch(arg: &'static str, got: candle_core::DType) -> candle_core::Error {
    KernelError::DType {
        op: OP,
        arg,
        got,
        expected: "q's dtype",
    }
    .into()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out_strides = dense_strides(self.order, ql.dims());
        let (out, lse) = match (
            floats(OP, "q", qs)?,
            floats(OP, "k", ks)?,
            floats(OP, "v", vs)?,
        ) {
            (Floats::F32(q), Floats::F32(k), Floats::F32(v)) => {
                let (o, lse) = cpu::forward(
                    view(q, ql),
                    view(k, kl),
                    view(v, vl),
                    &self.vis,
                    self.scale,
                    out_strides,
                );
                (owned(o), lse)
            }
            (Floats::BF16(q), Floats::BF16(k), Floats::BF16(v)) => {
                let (o, lse) = cpu::forward(
                    view(q, ql),
                    view(k, kl),
                    view(v, vl),
                    &self.vis,
                    self.scale,
                    out_strides,
                );
                (owned(o), lse)
            }
            (Floats::F16(q), Floats::F16(k), Floats::F16(v)) => {
                let (o, lse) = cpu::forward(
                    view(q, ql),
                    view(k, kl),
                    view(v, vl),
                    &self.vis,
                    self.scale,
                    out_strides,
                );
                (owned(o), lse)
            }
            _ => return Err(dtype_mismatch("k", ks.dtype())),
        };
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(Arc::new(lse));
        }
        Ok((out, ordered_shape(ql.dims(), self.order)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self
            .lse
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or_else(|| value_err(OP, "q", "backward without a forward on the CPU"))?;
        let logical = |t: &Tensor| -> Result<Tensor> {
            let t = t.permute(unorder(self.order))?;
            let t = if t.stride()[3] == 1 {
                t
            } else {
                t.contiguous()?
            };
            if t.dtype() == q.dtype() {
                Ok(t)
            } else {
                t.to_dtype(q.dtype())
            }
        };
        let (o, d_o) = (logical(res)?, logical(grad)?);
        // Each gradient is laid out in its input's memory order (as the forward's output
        // follows q's): for heads made by `transpose(1, 2)` of a projection's `[b, t, h, d]`
        // output, the gradient's way back through that transpose is then free instead of
        // a strided copy (see `GradStore::accumulate` in vendor/candle-core).
        let (q_order, dq_strides) = follow_order(q.layout());
        let (k_order, dk_strides) = follow_order(k.layout());
        let (v_order, dv_strides) = follow_order(v.layout());
        let strides = cpu::GradStrides {
            dq: dq_strides,
            dk: dk_strides,
            dv: dv_strides,
        };
        let (dq, dk, dv) = with_cpu(OP, "q", q, |qs, ql| {
            with_cpu(OP, "k", k, |ks, kl| {
                with_cpu(OP, "v", v, |vs, vl| {
                    with_cpu(OP, "output", &o, |os, ol| {
                        with_cpu(OP, "grad", &d_o, |gs, gl| {
                            macro_rules! run {
                                ($q:expr, $k:expr, $v:expr, $o:expr, $g:expr) => {{
                                    let bw = cpu::BackwardInputs {
                                        o: view($o, ol),
                                        d_o: view($g, gl),
                                        lse: &lse,
                                    };
                                    let g = cpu::backward(
                                        view($q, ql),
                                        view($k, kl),
                                        view($v, vl),
                                        &bw,
                                        &self.vis,
                                        self.scale,
                                        strides,
                                    );
                                    (owned(g.dq), owned(g.dk), owned(g.dv))
                                }};
                            }
                            Ok(
                                match (
                                    floats(OP, "q", qs)?,
                                    floats(OP, "k", ks)?,
                                    floats(OP, "v", vs)?,
                                    floats(OP, "output", os)?,
                                    floats(OP, "grad", gs)?,
                                ) {
                                    (
                                        Floats::F32(q),
                                        Floats::F32(k),
                                        Floats::F32(v),
                                        Floats::F32(o),
                                        Floats::F32(g),
                                    ) => run!(q, k, v, o, g),
                                    (
                                        Floats::BF16(q),
                                        Floats::BF16(k),
                                        Floats::BF16(v),
                                        Floats::BF16(o),
                                        Floats::BF16(g),
                                    ) => run!(q, k, v, o, g),
                                    (
                                        Floats::F16(q),
                                        Floats::F16(k),
                                        Floats::F16(v),
                                        Floats::F16(o),
                                        Floats::F16(g),
                                    ) => run!(q, k, v, o, g),
                                    _ => return Err(dtype_mismatch("k", ks.dtype())),
                                },
                            )
                        })
                    })
                })
            })
        })?;
        let wrap = |s: CpuStorage, like: &Tensor, order: [usize; 4]| -> Result<Option<Tensor>> {
            if !like.track_op() {
                return Ok(None);
            }
            let t = Tensor::from_storage(
                candle_core::Storage::Cpu(s),
                ordered_shape(like.dims(), order),
                candle_core::op::BackpropOp::none(),
                false,
            );
            Ok(Some(t.permute(unorder(order))?))
        };
        Ok((
            wrap(dq, q, q_order)?,
            wrap(dk, k, k_order)?,
            wrap(dv, v, v_order)?,
        ))
    }
}
