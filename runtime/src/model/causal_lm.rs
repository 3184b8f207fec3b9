//! `*ForCausalLM`: the decoder plus `lm_head`, loaded from a checkpoint, with the two
//! forwards the rest of the runtime calls.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::config::DecoderConfig;
use super::cpu::SeqSpan;
use super::decoder::{InferContext, Loader, Model, TrainContext, check_ids};
use super::error::{CandleContext, ModelError, Result};
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::rope::Rope;
use super::weights::Weights;

/// How to materialise the weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight dtype; `None` keeps config.json's (f32 when it says nothing).
    pub dtype: Option<DType>,
    /// Create every weight as a trainable variable (full fine-tuning, gradient tests).
    pub trainable: bool,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            trainable: false,
            device: Device::Cpu,
        }
    }
}

/// One training batch. Rows are right-padded or packed; padding needs no mask because
/// attention is causal and padded labels are ignored by the loss.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatch<'a> {
    /// `[B, T]` token ids (u32).
    pub input_ids: &'a Tensor,
    /// `[B, T]` positions (u32); default: counting from 0 at each sample start.
    pub position_ids: Option<&'a Tensor>,
    /// Per row, the lengths of the samples packed into it (summing to T); a token attends
    /// only within its sample. `None`: one sample per row.
    pub sample_lengths: Option<&'a [Vec<usize>]>,
}

/// Which positions of an inference step get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// The last token of each sequence (what generation needs): `[sequences, vocab]`.
    Last,
    /// Every token: `[N, vocab]`.
    All,
}

/// A causal language model: `model` (the decoder) and `lm_head`.
#[derive(Debug)]
pub struct CausalLm {
    pub config: DecoderConfig,
    pub model: Model,
    /// Shares its weight with `model.embed_tokens` when embeddings are tied.
    pub lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
    /// Every parameter by checkpoint name (variables when loaded trainable).
    params: Vec<(String, Tensor)>,
    vars: Vec<(String, Var)>,
}

impl CausalLm {
    /// Loads the weights of `folder` for an already-parsed `config`.
    pub fn load(folder: &Path, config: DecoderConfig, opts: &LoadOptions) -> Result<Self> {
        let weights = Weights::open(folder, &opts.device)?;
        let dtype = opts.dtype.or(config.torch_dtype).unwrap_or(DType::F32);
        let mut loader = Loader {
            weights: &weights,
            dtype,
            trainable: opts.trainable,
            params: Vec::new(),
            vars: Vec::new(),
        };
        let model = Model::load(&mut loader, &config)?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(model.embed_tokens.clone(), None)
        } else {
            let w = loader.tensor("lm_head.weight", &[config.vocab_size, config.hidden_size])?;
            Linear::new(w, None)
        };
        let rope = Rope::new(&config.rope, config.head_dim);
        let (params, vars) = (loader.params, loader.vars);
        Ok(CausalLm {
            config,
            model,
            lm_head,
            rope,
            dtype,
            device: opts.device.clone(),
            params,
            vars,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter tensor by checkpoint name (tied weights listed once).
    pub fn named_parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The trainable variables (empty unless loaded with `trainable`).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Training mode: hidden states `[B, T, hidden]` before `lm_head`, differentiable.
    /// The trainer fuses `lm_head` with its chunked cross-entropy; [`Self::logits_train`]
    /// is the unfused product.
    pub fn forward_train(&self, batch: &TrainBatch) -> Result<Tensor> {
        let (b, t) = batch.input_ids.dims2().ctx("input_ids")?;
        let ids = batch.input_ids.flatten_all()?.to_vec1::<u32>()?;
        check_ids(&ids, self.config.vocab_size)?;
        let segments = match batch.sample_lengths {
            Some(rows) => {
                if rows.len() != b || rows.iter().any(|r| r.iter().sum::<usize>() != t) {
                    return Err(ModelError::Input(format!(
                        "sample_lengths must give {b} rows of lengths summing to {t}"
                    )));
                }
                rows.to_vec()
            }
            None => vec![vec![t]; b],
        };
        let positions: Vec<u32> = match batch.position_ids {
            Some(p) => {
                if p.dims() != [b, t] {
                    return Err(ModelError::Input(format!(
                        "position_ids must be [{b}, {t}], got {:?}",
                        p.dims()
                    )));
                }
                p.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?
            }
            None => segments
                .iter()
                .flat_map(|row| row.iter().flat_map(|&len| 0..len as u32))
                .collect(),
        };
        let angles = self.rope.angles(&positions, &self.device)?;
        let half = self.config.head_dim / 2;
        let mask = Tensor::from_vec(attention_mask(t, &segments), (b, 1, t, t), &self.device)?;
        let ctx = TrainContext {
            cos: angles.cos.reshape((b, t, half))?,
            sin: angles.sin.reshape((b, t, half))?,
            mask,
        };
        self.model.forward_train(batch.input_ids, &ctx)
    }

    /// `lm_head` over hidden states, differentiable.
    pub fn logits_train(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward_train(hidden)
    }

    /// A KV cache for this model's layer shape (slots are reserved per sequence).
    pub fn new_kv_cache(&self) -> KvCache {
        KvCache::new(
            self.config.num_hidden_layers,
            self.config.num_key_value_heads,
            self.config.head_dim,
        )
    }

    /// Inference mode: runs the new `tokens` of each sequence (ordered span by span),
    /// appends their keys/values to the cache and returns f32 logits.
    pub fn forward_infer(
        &self,
        tokens: &[u32],
        spans: &[SeqSpan],
        cache: &mut KvCache,
        rows: LogitRows,
    ) -> Result<Tensor> {
        let n: usize = spans.iter().map(|s| s.len).sum();
        if n != tokens.len() || n == 0 {
            return Err(ModelError::Input(format!(
                "forward_infer: spans cover {n} tokens, got {}",
                tokens.len()
            )));
        }
        check_ids(tokens, self.config.vocab_size)?;
        for s in spans {
            let cached = cache.len(s.slot)?;
            if cached != s.start {
                return Err(ModelError::Input(format!(
                    "forward_infer: slot {} holds {cached} tokens but the step starts at {}",
                    s.slot, s.start
                )));
            }
            let end = s.start + s.len;
            if end > self.config.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "sequence of {end} tokens exceeds the model's context \
                     (max_position_embeddings {})",
                    self.config.max_position_embeddings
                )));
            }
        }
        let positions: Vec<u32> = spans
            .iter()
            .flat_map(|s| (s.start..s.start + s.len).map(|p| p as u32))
            .collect();
        let (cos, sin) = self.rope_vectors(&positions);
        let groups: Vec<usize> = spans.iter().map(|s| s.len).collect();
        let ctx = InferContext {
            spans,
            groups: &groups,
            cos: &cos,
            sin: &sin,
        };
        let ids = Tensor::new(tokens, &self.device)?;
        let hidden = self.model.forward_infer(&ids, &ctx, cache)?;
        for s in spans {
            cache.advance(s.slot, s.len)?;
        }
        let (hidden, groups) = match rows {
            LogitRows::All => (hidden, groups),
            LogitRows::Last => {
                let mut last = Vec::with_capacity(spans.len());
                let mut end = 0u32;
                for s in spans {
                    end += s.len as u32;
                    last.push(end - 1);
                }
                let rows = hidden.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
                (rows, vec![1; spans.len()])
            }
        };
        self.lm_head.forward_infer(&hidden, &groups)
    }

    fn rope_vectors(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let inv = self.rope.inv_freq();
        let mut cos = Vec::with_capacity(positions.len() * inv.len());
        let mut sin = Vec::with_capacity(positions.len() * inv.len());
        for &p in positions {
            for &f in inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }
}

/// Additive mask `[B, T, T]`: 0 where query i may attend key j (same sample, j <= i),
/// -inf elsewhere.
fn attention_mask(t: usize, segments: &[Vec<usize>]) -> Vec<f32> {
    let mut mask = vec![f32::NEG_INFINITY; segments.len() * t * t];
    for (b, row) in segments.iter().enumerate() {
        let mut start = 0;
        for &len in row {
            for i in start..start + len {
                for j in start..=i {
                    mask[(b * t + i) * t + j] = 0.0;
                }
            }
            start += len;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_within_samples_only() {
        let m = attention_mask(3, &[vec![2, 1]]);
        let allowed: Vec<bool> = m.iter().map(|v| *v == 0.0).collect();
        assert_eq!(
            allowed,
            vec![true, false, false, true, true, false, false, false, true]
        );
    }
}
