//! A Qwen2-style decoder layer with LoRA on every linear, written twice: with this crate's
//! kernels, and with plain differentiable candle ops (what a model looks like without them:
//! materialised scores, matmul backward into the frozen weights, f32 softmax/norm like
//! transformers' eager code). Shared by the benchmark and the gradient-flow test.

#![allow(dead_code)]

use candle_core::{D, DType, Device, Result, Tensor, Var};
use kubeswift_kernels::{AttnMask, attention, lora_linear, reference, rms_norm, rope, rope_tables};

/// Layer sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub rank: usize,
    pub lora_alpha: f64,
    pub eps: f64,
    pub rope_theta: f32,
}

impl Config {
    /// One layer of Qwen2.5-0.5B with LoRA r16 (alpha 32).
    pub fn qwen2_5_0_5b() -> Self {
        Config {
            hidden: 896,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
            intermediate: 4864,
            rank: 16,
            lora_alpha: 32.0,
            eps: 1e-6,
            rope_theta: 1_000_000.0,
        }
    }

    /// A few-hundred-parameter layer for tests (GQA 3:1, odd sizes).
    pub fn tiny() -> Self {
        Config {
            hidden: 24,
            heads: 3,
            kv_heads: 1,
            head_dim: 8,
            intermediate: 37,
            rank: 4,
            lora_alpha: 8.0,
            eps: 1e-6,
            rope_theta: 10_000.0,
        }
    }
}

/// A frozen linear layer with a trainable LoRA adapter.
pub struct Lora {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub a: Tensor,
    pub b_lora: Tensor,
    pub scale: f64,
}

impl Lora {
    fn kernel(&self, x: &Tensor) -> Result<Tensor> {
        lora_linear(
            x,
            &self.w,
            self.b.as_ref(),
            &self.a,
            &self.b_lora,
            self.scale,
        )
    }

    /// PEFT's computation in plain ops: the base in the input's dtype, the adapter in the
    /// adapter's dtype.
    fn plain(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.w.t()?)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let xa = x.to_dtype(self.a.dtype())?.broadcast_matmul(&self.a.t()?)?;
        let up = (xa.broadcast_matmul(&self.b_lora.t()?)? * self.scale)?;
        y + up.to_dtype(x.dtype())?
    }
}

/// The layer's weights; `vars` are the trainable ones (LoRA adapters, and the norms when
/// asked).
pub struct Layer {
    pub cfg: Config,
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
    pub q_proj: Lora,
    pub k_proj: Lora,
    pub v_proj: Lora,
    pub o_proj: Lora,
    pub gate_proj: Lora,
    pub up_proj: Lora,
    pub down_proj: Lora,
    pub cos: Tensor,
    pub sin: Tensor,
    pub vars: Vec<(String, Var)>,
}

struct Init<'a> {
    seed: u64,
    dtype: DType,
    device: &'a Device,
    vars: Vec<(String, Var)>,
}

impl Init<'_> {
    fn tensor(&mut self, dims: &[usize], scale: f32, dtype: DType) -> Result<Tensor> {
        self.seed += 1;
        reference::random(self.seed, dims, scale, self.device)?.to_dtype(dtype)
    }

    fn var(&mut self, name: String, t: Tensor) -> Result<Tensor> {
        let v = Var::from_tensor(&t)?;
        let t = v.as_tensor().clone();
        self.vars.push((name, v));
        Ok(t)
    }

    fn lora(
        &mut self,
        name: &str,
        cfg: &Config,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Lora> {
        let w = self.tensor(&[out, inp], 1.0 / (inp as f32).sqrt(), self.dtype)?;
        let b = if bias {
            Some(self.tensor(&[out], 0.1, self.dtype)?)
        } else {
            None
        };
        // Adapters are f32 (PEFT's default); B is non-zero so every gradient is non-trivial.
        let a = self.tensor(&[cfg.rank, inp], 1.0 / (inp as f32).sqrt(), DType::F32)?;
        let bl = self.tensor(&[out, cfg.rank], 0.02, DType::F32)?;
        Ok(Lora {
            w,
            b,
            a: self.var(format!("{name}.lora_A"), a)?,
            b_lora: self.var(format!("{name}.lora_B"), bl)?,
            scale: cfg.lora_alpha / cfg.rank as f64,
        })
    }
}

impl Layer {
    pub fn new(
        cfg: Config,
        dtype: DType,
        device: &Device,
        seed: u64,
        train_norms: bool,
    ) -> Result<Self> {
        let mut init = Init {
            seed,
            dtype,
            device,
            vars: Vec::new(),
        };
        let (h, q, kv, i) = (
            cfg.hidden,
            cfg.heads * cfg.head_dim,
            cfg.kv_heads * cfg.head_dim,
            cfg.intermediate,
        );
        let norm = |init: &mut Init<'_>, name: &str| -> Result<Tensor> {
            let w = (init.tensor(&[h], 0.2, DType::F32)? + 1.0)?.to_dtype(dtype)?;
            if train_norms {
                init.var(name.to_string(), w)
            } else {
                Ok(w)
            }
        };
        let input_layernorm = norm(&mut init, "input_layernorm")?;
        let post_attention_layernorm = norm(&mut init, "post_attention_layernorm")?;
        let inv_freq: Vec<f32> = (0..cfg.head_dim / 2)
            .map(|k| 1.0 / cfg.rope_theta.powf(2.0 * k as f32 / cfg.head_dim as f32))
            .collect();
        let (cos, sin) = rope_tables(&inv_freq, 4096, device)?;
        Ok(Layer {
            q_proj: init.lora("q_proj", &cfg, h, q, true)?,
            k_proj: init.lora("k_proj", &cfg, h, kv, true)?,
            v_proj: init.lora("v_proj", &cfg, h, kv, true)?,
            o_proj: init.lora("o_proj", &cfg, q, h, false)?,
            gate_proj: init.lora("gate_proj", &cfg, h, i, false)?,
            up_proj: init.lora("up_proj", &cfg, h, i, false)?,
            down_proj: init.lora("down_proj", &cfg, i, h, false)?,
            cfg,
            input_layernorm,
            post_attention_layernorm,
            cos,
            sin,
            vars: init.vars,
        })
    }

    /// The layer with this crate's kernels. `x`: `[b, t, hidden]`, `positions`: `[b, t]`.
    pub fn forward_kernels(
        &self,
        x: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let h = rms_norm(x, &self.input_layernorm, c.eps)?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, c.head_dim))?.transpose(1, 2);
        let q = heads(self.q_proj.kernel(&h)?, c.heads)?;
        let k = heads(self.k_proj.kernel(&h)?, c.kv_heads)?;
        let v = heads(self.v_proj.kernel(&h)?, c.kv_heads)?;
        let q = rope(&q, &self.cos, &self.sin, positions)?;
        let k = rope(&k, &self.cos, &self.sin, positions)?;
        let o = attention(&q, &k, &v, mask)?;
        let o = o.transpose(1, 2)?.reshape((b, t, c.heads * c.head_dim))?;
        let x = (x + self.o_proj.kernel(&o)?)?;
        let h = rms_norm(&x, &self.post_attention_layernorm, c.eps)?;
        let m =
            kubeswift_kernels::silu_mul(&self.gate_proj.kernel(&h)?, &self.up_proj.kernel(&h)?)?;
        x + self.down_proj.kernel(&m)?
    }

    /// The same layer in plain candle ops, causal attention over `positions` (`[b, t]`).
    pub fn forward_plain(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let dtype = x.dtype();
        let h = plain_rms_norm(x, &self.input_layernorm, c.eps)?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, c.head_dim))?.transpose(1, 2);
        let q = heads(self.q_proj.plain(&h)?, c.heads)?;
        let k = heads(self.k_proj.plain(&h)?, c.kv_heads)?;
        let v = heads(self.v_proj.plain(&h)?, c.kv_heads)?;
        let q = plain_rope(&q, &self.cos, &self.sin, positions)?;
        let k = plain_rope(&k, &self.cos, &self.sin, positions)?;
        let group = c.heads / c.kv_heads;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(2)?
                .broadcast_as((b, c.kv_heads, group, t, c.head_dim))?
                .reshape((b, c.heads, t, c.head_dim))
        };
        let (k, v) = (repeat(&k)?, repeat(&v)?);
        let scores = (q.contiguous()?.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        let causal: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal = Tensor::from_vec(causal, (t, t), x.device())?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(&causal)?;
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let p = e
            .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
            .to_dtype(dtype)?;
        let o = p.matmul(&v.contiguous()?)?;
        let o = o.transpose(1, 2)?.reshape((b, t, c.heads * c.head_dim))?;
        let x = (x + self.o_proj.plain(&o)?)?;
        let h = plain_rms_norm(&x, &self.post_attention_layernorm, c.eps)?;
        let g = self.gate_proj.plain(&h)?;
        let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
        let m = (silu * self.up_proj.plain(&h)?)?;
        x + self.down_proj.plain(&m)?
    }
}

/// transformers' `Qwen2RMSNorm`: f32 statistics, rounded to the input dtype, times weight.
fn plain_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf
        .broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(x.dtype())?;
    y.broadcast_mul(w)
}

/// `x * cos + rotate_half(x) * sin` at explicit positions, in plain ops.
fn plain_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (b, _h, t, d) = x.dims4()?;
    let pos = positions.flatten_all()?;
    let table = |tab: &Tensor| -> Result<Tensor> {
        let half = tab.index_select(&pos, 0)?.reshape((b, 1, t, d / 2))?;
        Tensor::cat(&[&half, &half], 3)?.to_dtype(x.dtype())
    };
    let (c, s) = (table(cos)?, table(sin)?);
    let x1 = x.narrow(3, 0, d / 2)?;
    let x2 = x.narrow(3, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    x.broadcast_mul(&c)? + rotated.broadcast_mul(&s)?
}
