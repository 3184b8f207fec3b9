//! The `lm_head` projection fused with softmax cross-entropy, in chunks of tokens.
//!
//! A `[tokens, vocab]` f32 logits matrix is 600 MB for 1k tokens of Qwen2's 152k vocabulary;
//! here at most `chunk_rows x vocab` logits exist at a time. Since the loss is a scalar, its
//! gradients are computed during the forward from each chunk's probabilities (`softmax -
//! onehot`) and scaled by the incoming gradient in the backward, so the logits are computed
//! exactly once. Tokens whose label is the ignore index cost nothing.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, TensorId};
use half::bf16;

use crate::cpu::gemm::{COut, Epilogue, MatRef, gemm};
use crate::cpu::math::exp;
use crate::cpu::multiversion::multiversion;
use crate::cpu::par;
use crate::elem::Elem;
use crate::error::{shape_err, value_err};
use crate::ops::packed_weights::{self, gemm_frozen_b};
use crate::storage::{check_float, contiguous_range, floats, ints, owned, with_floats};

const OP: &str = "linear_cross_entropy";

/// The label value that marks a token as not trained (PyTorch's and Hugging Face's -100).
pub const IGNORE_INDEX: i64 = -100;

/// Options of [`linear_cross_entropy`].
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyOptions {
    /// Labels equal to this are skipped.
    pub ignore_index: i64,
    /// Upper bound on the f32 logits kept at once, in bytes (rows per chunk =
    /// `chunk_bytes / (4 * vocab)`, at least 1).
    pub chunk_bytes: usize,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            ignore_index: IGNORE_INDEX,
            chunk_bytes: 64 << 20,
        }
    }
}

/// The result of [`linear_cross_entropy`].
#[derive(Clone, Debug)]
pub struct CrossEntropy {
    /// Sum of the per-token losses over non-ignored tokens: an f32 scalar, differentiable
    /// with respect to `hidden` and `weight`.
    pub loss_sum: Tensor,
    /// Number of non-ignored tokens.
    pub count: usize,
    /// Non-ignored tokens whose arg-max logit is the label (for token accuracy).
    pub correct: usize,
    /// The non-ignored tokens (row indices of `hidden`, ascending) whose arg-max logit is
    /// not the label, for per-sequence accuracy.
    pub missed: Vec<usize>,
}

impl CrossEntropy {
    /// Mean loss over non-ignored tokens (`0` when every label is ignored, instead of
    /// PyTorch's NaN, so an all-prompt micro-batch does not poison gradient accumulation).
    pub fn mean(&self) -> Result<Tensor> {
        self.loss_sum.affine(1.0 / self.count.max(1) as f64, 0.0)
    }
}

/// Cross-entropy of `softmax(hidden W^T)` against `labels`, without materialising the
/// logits: `hidden` is `[N, H]`, `weight` (the `lm_head`, or tied embeddings) `[V, H]`,
/// `labels` integer `[N]` (already shifted: label `i` is the target of row `i`).
///
/// Gradients flow to `hidden`, and to `weight` when it is trainable (a `Var` or computed
/// from one); they are computed only for the inputs that track gradients.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    options: CrossEntropyOptions,
) -> Result<CrossEntropy> {
    check_float(OP, "hidden", hidden)?;
    check_float(OP, "weight", weight)?;
    let (n, h) = hidden
        .dims2()
        .map_err(|_| shape_err(OP, "hidden", hidden.shape(), "[tokens, hidden]"))?;
    let (v, wh) = weight
        .dims2()
        .map_err(|_| shape_err(OP, "weight", weight.shape(), "[vocab, hidden]"))?;
    if wh != h {
        return Err(shape_err(
            OP,
            "weight",
            weight.shape(),
            format!("[vocab, {h}]"),
        ));
    }
    if labels.dims() != [n] {
        return Err(shape_err(OP, "labels", labels.shape(), format!("[{n}]")));
    }
    let labels = ints(OP, "labels", labels)?;
    let mut rows = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if l == options.ignore_index {
            continue;
        }
        if l < 0 || l as usize >= v {
            return Err(value_err(
                OP,
                "labels",
                format!(
                    "label {l} at token {i} is outside the vocabulary 0..{v} (and is not the ignore index {})",
                    options.ignore_index
                ),
            ));
        }
        rows.push((i, l as usize));
    }
    #[cfg(feature = "cuda")]
    if hidden.device().is_cuda() {
        return crate::cuda::fallback::linear_cross_entropy(hidden, weight, &rows);
    }
    let count = rows.len();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let op = LinearCrossEntropy {
        rows: Arc::new(rows),
        chunk_rows: (options.chunk_bytes / (4 * v.max(1))).max(1),
        grad_hidden: hidden.track_op(),
        grad_weight: weight.track_op(),
        weight_id: packed_weights::cache_id(weight),
        stats: stats.clone(),
    };
    let loss_sum = hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)?;
    let (correct, missed) = stats
        .lock()
        .map(|mut s| (s.correct, std::mem::take(&mut s.missed)))
        .unwrap_or_default();
    Ok(CrossEntropy {
        loss_sum,
        count,
        correct,
        missed,
    })
}

struct LinearCrossEntropy {
    /// `(token, label)` for every non-ignored token.
    rows: Arc<Vec<(usize, usize)>>,
    chunk_rows: usize,
    grad_hidden: bool,
    grad_weight: bool,
    /// The weight's id for the packed-weight cache (a frozen lm_head).
    weight_id: Option<TensorId>,
    stats: Arc<Mutex<Stats>>,
}

/// What the forward leaves for the caller and the backward.
#[derive(Default)]
struct Stats {
    correct: usize,
    missed: Vec<usize>,
    /// d(loss_sum)/d(hidden), `[N, H]` f32.
    d_hidden: Option<Arc<Vec<f32>>>,
    /// d(loss_sum)/d(weight), `[V, H]` f32.
    d_weight: Option<Arc<Vec<f32>>>,
}

struct Sums {
    loss: f64,
    correct: usize,
    missed: Vec<usize>,
    d_hidden: Option<Vec<f32>>,
    d_weight: Option<Vec<f32>>,
}

impl LinearCrossEntropy {
    fn run<TH: Elem, TW: Elem>(&self, hidden: &[TH], weight: &[TW], n: usize, h: usize) -> Sums {
        let v = weight.len() / h.max(1);
        let mut sums = Sums {
            loss: 0.0,
            correct: 0,
            missed: Vec::new(),
            d_hidden: self.grad_hidden.then(|| par::filled(n * h, 0f32)),
            d_weight: self.grad_weight.then(|| vec![0f32; v * h]),
        };
        let w = MatRef::row_major(weight, v, h);
        let mut gathered = Vec::new();
        let mut logits = Vec::new();
        let mut dh_chunk = Vec::new();
        let mut probs_bf16 = Vec::new();
        for chunk in self.rows.chunks(self.chunk_rows) {
            let nc = chunk.len();
            // The chunk's hidden rows, contiguous (ignored tokens are skipped).
            gathered.clear();
            for &(i, _) in chunk {
                gathered.extend_from_slice(&hidden[i * h..(i + 1) * h]);
            }
            let hc = MatRef::row_major(&gathered[..], nc, h);
            if logits.len() < nc * v {
                // Written whole by the product below; zero-filled on all threads (tens of
                // MBs, a serial memset of the whole vocabulary's logits otherwise).
                logits = par::filled(nc * v, 0f32);
            }
            gemm(hc, w.t(), &mut logits[..nc * v], v, 1.0, 0.0);
            let want_grad = self.grad_hidden || self.grad_weight;
            let per_row: Vec<Mutex<(f64, bool)>> =
                (0..nc).map(|_| Mutex::new((0.0, false))).collect();
            par::for_each_chunk_mut(&mut logits[..nc * v], v, |r, row| {
                let result = row_loss(row, chunk[r].1, want_grad);
                if let Ok(mut slot) = per_row[r].lock() {
                    *slot = result;
                }
            });
            let per_row = per_row.into_iter().filter_map(|m| m.into_inner().ok());
            for ((loss, hit), &(token, _)) in per_row.zip(chunk) {
                sums.loss += loss;
                sums.correct += hit as usize;
                if !hit {
                    sums.missed.push(token);
                }
            }
            let probs = MatRef::row_major(&logits[..nc * v], nc, v);
            if let Some(dh) = &mut sums.d_hidden {
                dh_chunk.resize(nc * h, 0f32);
                match TW::as_bf16(weight).filter(|_| TH::as_bf16(hidden).is_some()) {
                    // A bf16 model's logit gradients are bf16 in Hugging Face too (the
                    // gradient of the loss's upcast is cast back to the lm_head's dtype),
                    // so rounding them here costs no accuracy against the peer and lets
                    // `dh = dlogits W` run on the bf16 GEMM (twice the f32 rate).
                    Some(wb) => {
                        probs_bf16.resize(nc * v, bf16::ZERO);
                        bf16::store(&logits[..nc * v], &mut probs_bf16);
                        let pb = MatRef::row_major(&probs_bf16[..], nc, v);
                        let wm = MatRef::row_major(wb, v, h);
                        gemm_frozen_b(
                            self.weight_id,
                            pb,
                            wm,
                            COut::init(&mut dh_chunk),
                            h,
                            1.0,
                            0.0,
                            &Epilogue::new(h),
                        );
                    }
                    None => gemm(probs, w, &mut dh_chunk, h, 1.0, 0.0),
                }
                for (r, &(i, _)) in chunk.iter().enumerate() {
                    dh[i * h..(i + 1) * h].copy_from_slice(&dh_chunk[r * h..(r + 1) * h]);
                }
            }
            if let Some(dw) = &mut sums.d_weight {
                gemm(probs.t(), hc, dw, h, 1.0, 1.0);
            }
        }
        sums
    }
}

/// Loss of one row of logits and whether its arg-max is the label; with `grad`, replaces
/// the row by `softmax - onehot(label)`.
fn row_loss(row: &mut [f32], label: usize, grad: bool) -> (f64, bool) {
    let (max, argmax) = max_and_argmax(row);
    let sum = sum_exp(row, max);
    let lse = max + sum.ln();
    let loss = (lse - row[label]) as f64;
    let hit = argmax == label;
    if grad {
        probs(row, lse);
        row[label] -= 1.0;
    }
    (loss, hit)
}

/// The largest value and its first index.
fn max_and_argmax(row: &[f32]) -> (f32, usize) {
    let max = row_max(row);
    let argmax = row.iter().position(|&x| x == max).unwrap_or(0);
    (max, argmax)
}

multiversion! {
    fn row_max(row: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let (chunks, tail) = row.as_chunks::<16>();
        for c in chunks {
            for i in 0..16 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for x in lanes.iter().chain(tail) {
            if *x > m || x.is_nan() {
                m = *x;
            }
        }
        m
    }
}

multiversion! {
    fn sum_exp(row: &[f32], max: f32) -> f32 {
        let mut lanes = [0f32; 16];
        let (chunks, tail) = row.as_chunks::<16>();
        for c in chunks {
            for i in 0..16 {
                lanes[i] += exp(c[i] - max);
            }
        }
        lanes.iter().sum::<f32>() + tail.iter().map(|x| exp(x - max)).sum::<f32>()
    }
}

multiversion! {
    fn probs(row: &mut [f32], lse: f32) {
        for x in row {
            *x = exp(*x - lse);
        }
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (h0, h1) = contiguous_range(OP, "hidden", hl)?;
        let (w0, w1) = contiguous_range(OP, "weight", wl)?;
        let (n, h) = (hl.dims()[0], hl.dims()[1]);
        let sums = with_floats!(floats(OP, "hidden", hs)?, hv => {
            with_floats!(floats(OP, "weight", ws)?, wv => self.run(&hv[h0..h1], &wv[w0..w1], n, h))
        });
        if let Ok(mut stats) = self.stats.lock() {
            stats.correct = sums.correct;
            stats.missed = sums.missed;
            stats.d_hidden = sums.d_hidden.map(Arc::new);
            stats.d_weight = sums.d_weight.map(Arc::new);
        }
        Ok((owned(vec![sums.loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (dh, dw) = match self.stats.lock() {
            Ok(stats) => (stats.d_hidden.clone(), stats.d_weight.clone()),
            Err(_) => (None, None),
        };
        let scaled = |d: Option<Arc<Vec<f32>>>, like: &Tensor| -> Result<Option<Tensor>> {
            let Some(d) = d else { return Ok(None) };
            let values: Vec<f32> = d.iter().map(|x| x * g).collect();
            let t = Tensor::from_vec(values, like.shape(), like.device())?;
            Ok(Some(if like.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(like.dtype())?
            }))
        };
        Ok((scaled(dh, hidden)?, scaled(dw, weight)?))
    }
}
