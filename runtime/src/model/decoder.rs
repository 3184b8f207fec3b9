//! The decoder module tree shared by Qwen2, Qwen3 and Llama. Field names mirror the
//! checkpoint keys (`model.layers.3.self_attn.q_proj.weight` is
//! `model.layers[3].self_attn.q_proj.weight`), and every module has two forwards over the
//! same weights:
//!
//! - `forward_train`: `[B, T]` batches with per-token positions and sample boundaries,
//!   differentiable end to end through the seam in `ops`;
//! - `forward_infer`: a ragged batch of sequences flattened to `[N, hidden]` f32, the KV
//!   cache, and the fused CPU kernels in `cpu`.

use candle_core::{DType, Tensor, Var};

use super::config::DecoderConfig;
use super::cpu::{self, AttentionInput, Heads, QkNorm, SeqSpan};
use super::error::{CandleContext, ModelError, Result};
use super::kv_cache::KvCache;
use super::linear::{InferRows, Linear};
use super::ops;
use super::weights::Weights;

/// Builds modules from checkpoint tensors, optionally as trainable variables.
pub(crate) struct Loader<'a> {
    pub weights: &'a Weights,
    pub dtype: DType,
    pub trainable: bool,
    /// See [`super::LoadOptions::huge_pages`].
    pub huge_pages: bool,
    pub vars: Vec<(String, Var)>,
}

impl Loader<'_> {
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.weights.get(name, shape, self.dtype)?;
        let t = if self.trainable {
            let var = Var::from_tensor(&t).ctx(name)?;
            let t = var.as_tensor().clone();
            self.vars.push((name.to_string(), var));
            t
        } else {
            t
        };
        // Last, once the tensor is in the memory it will live in (a variable is a copy).
        if self.huge_pages {
            super::cpu::storage::back_with_huge_pages(&t);
        }
        Ok(t)
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }

    fn rms_norm(&mut self, prefix: &str, size: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.tensor(&format!("{prefix}.weight"), &[size])?,
            eps,
        })
    }
}

/// Root-mean-square layer norm with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }

    /// f32 RMSNorm on the calling thread (no backward; inference only).
    pub fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        cpu::elementwise::rms_norm(x, &self.weight, self.eps)
    }
}

/// The per-forward context of a training batch, shared by every layer.
pub struct TrainContext {
    /// RoPE tables `[max_position + 1, D/2]` each, f32.
    pub cos: Tensor,
    pub sin: Tensor,
    /// `[B, T]` u32 position of every token.
    pub positions: Tensor,
    /// Causal, and within each token's sample (packing, padding).
    pub mask: ops::AttnMask,
}

/// The per-forward context of an inference step, shared by every layer.
pub struct InferContext<'a> {
    pub spans: &'a [SeqSpan],
    /// Token count of each span, for the linear layers' row groups.
    pub groups: &'a [usize],
    /// `[N, D/2]` each.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Multi-head self-attention with grouped key/value heads.
#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3 only.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    fn load(l: &mut Loader, prefix: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(l.rms_norm(&format!("{prefix}.q_norm"), d, cfg.rms_norm_eps)?),
                Some(l.rms_norm(&format!("{prefix}.k_norm"), d, cfg.rms_norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(Attention {
            q_proj: l.linear(&format!("{prefix}.q_proj"), nq * d, h, cfg.qkv_bias)?,
            k_proj: l.linear(&format!("{prefix}.k_proj"), nkv * d, h, cfg.qkv_bias)?,
            v_proj: l.linear(&format!("{prefix}.v_proj"), nkv * d, h, cfg.qkv_bias)?,
            o_proj: l.linear(&format!("{prefix}.o_proj"), h, nq * d, cfg.o_bias)?,
            q_norm,
            k_norm,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    /// Training mode, q/k/v from `products`; with `grad_only` the output is only
    /// backpropagated through and `o_proj`'s product is skipped (see
    /// [`Linear::forward_train_grad_only`]).
    fn forward_train(
        &self,
        x: &Tensor,
        ctx: &TrainContext,
        grad_only: bool,
        mut products: Products,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?)
        };
        let mut q = heads(products.project(0, &self.q_proj, x)?, self.num_heads)?;
        let mut k = heads(products.project(1, &self.k_proj, x)?, self.num_kv_heads)?;
        let v = heads(products.project(2, &self.v_proj, x)?, self.num_kv_heads)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward_train(&q)?;
            k = kn.forward_train(&k)?;
        }
        let q = ops::rope(&q, &ctx.cos, &ctx.sin, &ctx.positions)?;
        let k = ops::rope(&k, &ctx.cos, &ctx.sin, &ctx.positions)?;
        let y = ops::attention(&q, &k, &v, &ctx.mask)?;
        let y = y.transpose(1, 2)?.reshape((b, t, self.num_heads * d))?;
        let y = match rows {
            Some(rows) => y
                .reshape((b * t, self.num_heads * d))?
                .index_select(rows, 0)?,
            None => y,
        };
        last_projection(&self.o_proj, &y, grad_only)
    }

    /// Every token's output, `[N, hidden]`; or with `last_rows` (each sequence's last
    /// token) every token's key and value into the cache but those rows' output only.
    fn forward_infer(
        &self,
        x: &Tensor,
        ctx: &InferContext,
        layer: usize,
        cache: &mut KvCache,
        last_rows: Option<&[usize]>,
    ) -> Result<Tensor> {
        let tokens = InferRows::Tokens(ctx.groups);
        let out_rows = match last_rows {
            None => tokens,
            Some(_) => InferRows::LastTokens,
        };
        let (q, k, v) = match last_rows {
            None => {
                let [q, k, v]: [Tensor; 3] = Linear::forward_infer_many(
                    &[&self.q_proj, &self.k_proj, &self.v_proj],
                    x,
                    tokens,
                )?
                .try_into()
                .map_err(|_| ModelError::Input("q/k/v projection count".into()))?;
                (q, k, v)
            }
            Some(rows) => {
                let [k, v]: [Tensor; 2] =
                    Linear::forward_infer_many(&[&self.k_proj, &self.v_proj], x, tokens)?
                        .try_into()
                        .map_err(|_| ModelError::Input("k/v projection count".into()))?;
                let q = self
                    .q_proj
                    .forward_infer(&select_rows(x, rows)?, out_rows)?;
                (q, k, v)
            }
        };
        let norms = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => Some((
                cpu::elementwise::to_f32_vec(&qn.weight)?,
                cpu::elementwise::to_f32_vec(&kn.weight)?,
                qn.eps,
            )),
            _ => None,
        };
        let heads = Heads {
            q_heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        };
        let n = q.dim(0)?;
        let out = cpu::with_f32_slice(&q, |q| {
            cpu::with_f32_slice(&k, |k| {
                cpu::with_f32_slice(&v, |v| {
                    let input = AttentionInput {
                        q,
                        query_tokens: last_rows,
                        k,
                        v,
                        cos: ctx.cos,
                        sin: ctx.sin,
                        qk_norm: norms.as_ref().map(|(q, k, eps)| QkNorm {
                            q,
                            k,
                            eps: *eps as f32,
                        }),
                    };
                    cpu::attention(input, heads, ctx.spans, layer, cache)
                })
            })
        })????;
        let y = Tensor::from_vec(out, (n, self.num_heads * self.head_dim), q.device())?;
        self.o_proj.forward_infer(&y, out_rows)
    }
}

/// The SiLU-gated feed-forward block.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn load(l: &mut Loader, prefix: &str, cfg: &DecoderConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: l.linear(&format!("{prefix}.gate_proj"), i, h, cfg.mlp_bias)?,
            up_proj: l.linear(&format!("{prefix}.up_proj"), i, h, cfg.mlp_bias)?,
            down_proj: l.linear(&format!("{prefix}.down_proj"), h, i, cfg.mlp_bias)?,
        })
    }

    /// Training mode, gate/up from `products`; with `grad_only` the output is only
    /// backpropagated through and `down_proj`'s product is skipped (see
    /// [`Linear::forward_train_grad_only`]).
    fn forward_train(&self, x: &Tensor, grad_only: bool, mut products: Products) -> Result<Tensor> {
        let y = ops::silu_mul(
            &products.project(0, &self.gate_proj, x)?,
            &products.project(1, &self.up_proj, x)?,
        )?;
        last_projection(&self.down_proj, &y, grad_only)
    }

    fn forward_infer(&self, x: &Tensor, rows: InferRows) -> Result<Tensor> {
        let gate_up = Linear::forward_infer_many(&[&self.gate_proj, &self.up_proj], x, rows)?;
        // The kernels' op: the vectorised exp on the pool's threads (a libm `expf` per
        // element on one thread was ~2% of a 16-stream server's time).
        let h = ops::silu_mul(&gate_up[0], &gate_up[1])?;
        self.down_proj.forward_infer(&h, rows)
    }
}

/// Where a half-layer's first products (q/k/v, gate/up: the ones the rest of the half
/// reads) come from in a training forward. Gradient checkpointing's selective form keeps
/// them through the forward, so that the backward's recomputation of the half redoes only
/// the cheap work between products (norms, RoPE, attention, SiLU) and not ~65% of the
/// forward's FLOPs.
pub enum Products<'a> {
    /// Computed.
    Compute,
    /// Computed, and each output kept in order (detached: its storage, not its graph);
    /// `None` for a layer that could not replay it (see [`Linear::replays`]), so no memory
    /// is held for nothing.
    Keep(&'a mut Vec<Option<Tensor>>),
    /// Taken from what a `Keep` forward of the same half on the same input kept; the
    /// gradients are exact (see [`Linear::forward_train_replay`]). Products not kept are
    /// computed.
    Reuse(&'a [Option<Tensor>]),
}

impl Products<'_> {
    /// The half's `index`-th product, `linear(x)`.
    fn project(&mut self, index: usize, linear: &Linear, x: &Tensor) -> Result<Tensor> {
        match self {
            Products::Compute => linear.forward_train(x),
            Products::Keep(kept) => {
                let y = linear.forward_train(x)?;
                kept.push(linear.replays().then(|| y.detach()));
                Ok(y)
            }
            Products::Reuse(saved) => match saved.get(index) {
                Some(Some(saved)) => linear.forward_train_replay(x, saved),
                Some(None) => linear.forward_train(x),
                None => Err(ModelError::Input(format!(
                    "no kept product {index} to replay"
                ))),
            },
        }
    }
}

/// A decoder layer's kept products (see [`Products`]), one list per half.
#[derive(Debug, Default)]
pub struct LayerProducts {
    pub attention: Vec<Option<Tensor>>,
    pub mlp: Vec<Option<Tensor>>,
}

/// A half-layer's last projection: the real product, or with `grad_only` one whose value
/// is never read (see [`Linear::forward_train_grad_only`]).
fn last_projection(linear: &Linear, x: &Tensor, grad_only: bool) -> Result<Tensor> {
    if grad_only {
        linear.forward_train_grad_only(x)
    } else {
        linear.forward_train(x)
    }
}

/// One pre-norm transformer block.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn load(l: &mut Loader, prefix: &str, cfg: &DecoderConfig) -> Result<Self> {
        Ok(DecoderLayer {
            self_attn: Attention::load(l, &format!("{prefix}.self_attn"), cfg)?,
            mlp: Mlp::load(l, &format!("{prefix}.mlp"), cfg)?,
            input_layernorm: l.rms_norm(
                &format!("{prefix}.input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            post_attention_layernorm: l.rms_norm(
                &format!("{prefix}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    /// Training mode: `[B, T, hidden]` in and out, differentiable.
    pub fn forward_train(&self, x: &Tensor, ctx: &TrainContext) -> Result<Tensor> {
        Ok(self.forward_train_halves(x, ctx, None)?.1)
    }

    /// [`Self::forward_train`] of the last layer when only `rows` of its output (indices
    /// into the flattened `[B * T]` tokens, u32) reach the loss: `[rows, hidden]`. Every
    /// token still gets its keys and values (the kept rows attend to them), but `o_proj`,
    /// the residual and the MLP run for the kept rows only. The prompt tokens of an SFT
    /// batch carry no loss: a quarter of the bench's tokens, so ~3% of a LoRA step's
    /// products (one layer's `o_proj` and MLP, forward and backward, for those rows) that
    /// autograd would compute and then multiply by zero.
    pub fn forward_train_rows(
        &self,
        x: &Tensor,
        ctx: &TrainContext,
        rows: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let a = self.self_attn.forward_train(
            &self.input_layernorm.forward_train(x)?,
            ctx,
            false,
            Products::Compute,
            Some(rows),
        )?;
        let h = (x.reshape((b * t, hidden))?.index_select(rows, 0)? + a)?;
        self.mlp_half(&h, false, Products::Compute)
    }

    /// [`Self::forward_train`] that also returns the residual stream between the two
    /// halves (`h = x + attention(x)`), which gradient checkpointing keeps beside `x`; with
    /// `keep`, the layer's first products are kept there too for a selective
    /// recomputation ([`Products::Reuse`]).
    pub fn forward_train_halves(
        &self,
        x: &Tensor,
        ctx: &TrainContext,
        keep: Option<&mut LayerProducts>,
    ) -> Result<(Tensor, Tensor)> {
        let (attention, mlp) = match keep {
            Some(kept) => (
                Products::Keep(&mut kept.attention),
                Products::Keep(&mut kept.mlp),
            ),
            None => (Products::Compute, Products::Compute),
        };
        let h = self.attention_half(x, ctx, false, attention)?;
        let out = self.mlp_half(&h, false, mlp)?;
        Ok((h, out))
    }

    /// `x + self_attn(input_layernorm(x))`, q/k/v from `products`; with `grad_only` its
    /// value is unspecified and only its gradients are exact (gradient checkpointing's
    /// recomputation backpropagates through `sum(half(x) * g)` and never reads the value,
    /// so `o_proj`'s product, whose input gradient needs only its input, is skipped).
    pub fn attention_half(
        &self,
        x: &Tensor,
        ctx: &TrainContext,
        grad_only: bool,
        products: Products,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward_train(
            &self.input_layernorm.forward_train(x)?,
            ctx,
            grad_only,
            products,
            None,
        )?;
        Ok((x + a)?)
    }

    /// `h + mlp(post_attention_layernorm(h))`, gate/up from `products`; `grad_only` as in
    /// [`Self::attention_half`] (`down_proj`'s product is skipped).
    pub fn mlp_half(&self, h: &Tensor, grad_only: bool, products: Products) -> Result<Tensor> {
        let m = self.mlp.forward_train(
            &self.post_attention_layernorm.forward_train(h)?,
            grad_only,
            products,
        )?;
        Ok((h + m)?)
    }

    /// `[N, hidden]`; with `last_rows` (each sequence's last token) only those tokens go
    /// past the keys and values, what the last layer needs when only their logits are
    /// read: `[last_rows, hidden]`.
    fn forward_infer(
        &self,
        x: &Tensor,
        ctx: &InferContext,
        layer: usize,
        cache: &mut KvCache,
        last_rows: Option<&[usize]>,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward_infer(
            &self.input_layernorm.forward_infer(x)?,
            ctx,
            layer,
            cache,
            last_rows,
        )?;
        let (x, rows) = match last_rows {
            None => (x.clone(), InferRows::Tokens(ctx.groups)),
            Some(r) => (select_rows(x, r)?, InferRows::LastTokens),
        };
        let h = cpu::elementwise::add(&x, &a)?;
        let m = self
            .mlp
            .forward_infer(&self.post_attention_layernorm.forward_infer(&h)?, rows)?;
        // Our add, not candle's: candle hands even a decode step's one row to its pool.
        cpu::elementwise::add(&h, &m)
    }
}

/// Rows `rows` of a `[N, hidden]` tensor.
fn select_rows(x: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(x.index_select(&Tensor::new(ids.as_slice(), x.device())?, 0)?)
}

/// `model.*`: embeddings, the decoder layers and the final norm.
#[derive(Debug, Clone)]
pub struct Model {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl Model {
    pub(crate) fn load(l: &mut Loader, cfg: &DecoderConfig) -> Result<Self> {
        let embed_tokens = l.tensor(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, cfg.hidden_size],
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(l, &format!("model.layers.{i}"), cfg))
            .collect::<Result<_>>()?;
        let norm = l.rms_norm("model.norm", cfg.hidden_size, cfg.rms_norm_eps)?;
        Ok(Model {
            embed_tokens,
            layers,
            norm,
        })
    }

    /// `[B, T]` ids -> hidden states `[B, T, hidden]` after the final norm.
    pub fn forward_train(&self, input_ids: &Tensor, ctx: &TrainContext) -> Result<Tensor> {
        let mut x = self.embed_train(input_ids)?;
        for layer in &self.layers {
            x = layer.forward_train(&x, ctx)?;
        }
        self.norm.forward_train(&x)
    }

    /// The embedding rows of `[B, T]` ids (differentiable in the table when it trains).
    pub fn embed_train(&self, input_ids: &Tensor) -> Result<Tensor> {
        ops::embedding(input_ids, &self.embed_tokens)
    }

    /// Flattened ids `[N]` -> hidden states after the final norm, f32: `[N, hidden]`, or
    /// with `last_only` `[sequences, hidden]`, each span's last token.
    ///
    /// With `last_only` the last layer computes every token's key and value (the cache
    /// needs them) but its queries, attention, `o_proj` and MLP only for the last tokens,
    /// as llama.cpp does: for a prompt of T tokens that is about 1/layers of the prompt's
    /// products saved (Qwen2-100M: 8 layers, ~12%). Those rows go through the
    /// few-rows kernel, as decode rows do, so a sequence's result still depends only on
    /// its own tokens.
    pub fn forward_infer(
        &self,
        ids: &[u32],
        ctx: &InferContext,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        let mut x = cpu::elementwise::embedding(&self.embed_tokens, ids)?;
        // With one token per span (decode) every token is its span's last already.
        let last_rows: Option<Vec<usize>> = (last_only && ctx.spans.len() < ids.len()).then(|| {
            ctx.spans
                .iter()
                .scan(0, |end, s| {
                    *end += s.len;
                    Some(*end - 1)
                })
                .collect()
        });
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let rows = last_rows.as_deref().filter(|_| i + 1 == layers);
            x = layer.forward_infer(&x, ctx, i, cache, rows)?;
        }
        self.norm.forward_infer(&x)
    }

    /// Every linear layer with its checkpoint prefix, for adapter injection.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut layer.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }
}

/// Every parameter of a [`Model`] with its checkpoint name, in PyTorch's registration
/// order (what `freeze_parameters_ratio` counts in): one traversal written once for both
/// borrows, `model_tensors!(model, mut, push_tensors_mut)` and
/// `model_tensors!(model, , push_tensors)`.
macro_rules! model_tensors {
    ($model:expr, $($m:ident)?, $push_linear:ident) => {{
        let model = $model;
        let mut out = Vec::new();
        out.push(("model.embed_tokens.weight".to_string(), &$($m)? model.embed_tokens));
        for (i, layer) in (&$($m)? model.layers).into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &$($m)? layer.self_attn;
            for (name, lin) in [
                ("self_attn.q_proj", &$($m)? a.q_proj),
                ("self_attn.k_proj", &$($m)? a.k_proj),
                ("self_attn.v_proj", &$($m)? a.v_proj),
                ("self_attn.o_proj", &$($m)? a.o_proj),
            ] {
                lin.$push_linear(&format!("{p}.{name}"), &mut out);
            }
            for (name, norm) in [
                ("self_attn.q_norm", &$($m)? a.q_norm),
                ("self_attn.k_norm", &$($m)? a.k_norm),
            ] {
                if let Some(n) = norm {
                    out.push((format!("{p}.{name}.weight"), &$($m)? n.weight));
                }
            }
            let mlp = &$($m)? layer.mlp;
            for (name, lin) in [
                ("mlp.gate_proj", &$($m)? mlp.gate_proj),
                ("mlp.up_proj", &$($m)? mlp.up_proj),
                ("mlp.down_proj", &$($m)? mlp.down_proj),
            ] {
                lin.$push_linear(&format!("{p}.{name}"), &mut out);
            }
            out.push((
                format!("{p}.input_layernorm.weight"),
                &$($m)? layer.input_layernorm.weight,
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &$($m)? layer.post_attention_layernorm.weight,
            ));
        }
        out.push(("model.norm.weight".to_string(), &$($m)? model.norm.weight));
        out
    }};
}

impl Model {
    /// Every parameter tensor with its checkpoint name, mutable, so the caller can turn
    /// chosen ones into trainable variables in place (full fine-tuning, modules_to_save).
    pub fn tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        model_tensors!(self, mut, push_tensors_mut)
    }

    /// Every parameter tensor with its checkpoint name, as the module tree holds it now
    /// (after a merge or a PiSSA init replaced some).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        model_tensors!(self, , push_tensors)
    }
}

/// Checks ids against the vocabulary before they index the embedding.
pub(crate) fn check_ids(ids: &[u32], vocab_size: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(id) => Err(ModelError::Input(format!(
            "token id {id} is outside the vocabulary (vocab_size {vocab_size})"
        ))),
        None => Ok(()),
    }
}
