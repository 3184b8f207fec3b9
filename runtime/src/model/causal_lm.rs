//! `*ForCausalLM`: the decoder plus `lm_head`, loaded from a checkpoint, with the two
//! forwards the rest of the runtime calls.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};

use super::config::DecoderConfig;
use super::cpu::SeqSpan;
use super::decoder::{InferContext, Loader, Model, TrainContext, check_ids};
use super::error::{CandleContext, ModelError, Result};
use super::kv_cache::{KvCache, KvDtype};
use super::linear::{InferRows, Linear};
use super::ops::{self, AttnMask, CrossEntropy};
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
    /// Move each weight onto transparent huge pages once loaded: batch-1 decoding reads
    /// every weight once a token, and with 4 KiB pages much of that walk is TLB misses.
    /// Training gained nothing measurable from it, and when the kernel has no free huge
    /// pages each attempt still costs its compaction (0.6 s of a training start was spent
    /// in failing `MADV_COLLAPSE`s), so the training commands turn it off.
    pub huge_pages: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            trainable: false,
            device: Device::Cpu,
            huge_pages: true,
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
            huge_pages: opts.huge_pages,
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
        let vars = loader.vars;
        Ok(CausalLm {
            config,
            model,
            lm_head,
            rope,
            dtype,
            device: opts.device.clone(),
            vars,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter tensor by checkpoint name as the module tree holds it now, in
    /// PyTorch's order; a tied `lm_head` is not repeated (transformers saves it once).
    /// Built on each call rather than kept: a kept list would hold on to weights that a
    /// merge or a PiSSA init replaced, and to their memory.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, &Tensor)> = self.model.tensors();
        if !self.config.tie_word_embeddings {
            self.lm_head.push_tensors("lm_head", &mut out);
        }
        out.into_iter().map(|(n, t)| (n, t.clone())).collect()
    }

    /// The trainable variables (empty unless loaded with `trainable`).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Training mode: hidden states `[B, T, hidden]` before `lm_head`, differentiable.
    /// The trainer fuses `lm_head` with its chunked cross-entropy ([`Self::loss_train`]);
    /// [`Self::logits_train`] is the unfused product.
    pub fn forward_train(&self, batch: &TrainBatch) -> Result<Tensor> {
        let ctx = self.train_context(batch)?;
        self.model.forward_train(batch.input_ids, &ctx)
    }

    /// What every layer of a training forward shares: RoPE tables, positions and the
    /// attention mask of `batch`. Public so the trainer can run the layers one at a time
    /// (gradient checkpointing).
    pub fn train_context(&self, batch: &TrainBatch) -> Result<TrainContext> {
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
        let max_pos = positions.iter().copied().max().unwrap_or(0);
        let table: Vec<u32> = (0..=max_pos).collect();
        let angles = self.rope.angles(&table, &self.device)?;
        let segment_ids = Tensor::from_vec(segment_ids(&segments), (b, t), &self.device)?;
        Ok(TrainContext {
            cos: angles.cos,
            sin: angles.sin,
            positions: Tensor::from_vec(positions, (b, t), &self.device)?,
            mask: AttnMask::causal().with_segment_ids(segment_ids),
        })
    }

    /// `lm_head` over hidden states, differentiable.
    pub fn logits_train(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward_train(hidden)
    }

    /// Summed cross-entropy of `hidden` `[B, T, H]` against `labels` `[B, T]` (i64,
    /// already shifted so that row t is scored against `labels[t]`; -100 = no loss),
    /// fused with `lm_head` so the logits never exist at once.
    pub fn loss_train(&self, hidden: &Tensor, labels: &Tensor) -> Result<CrossEntropy> {
        if self.lm_head.adapter().is_some() {
            return Err(ModelError::Input(
                "a LoRA adapter on lm_head is not supported yet (use modules_to_save lm_head)"
                    .into(),
            ));
        }
        let h = hidden.dim(D::Minus1)?;
        let hidden = hidden.reshape(((), h))?;
        let labels = labels.flatten_all()?;
        ops::linear_cross_entropy(&hidden, self.lm_head.weight(), &labels)
    }

    /// Turns the parameters whose checkpoint name `select` picks into trainable variables,
    /// in place (the module tree then reads the variables), and returns them. Parameters
    /// already trainable are returned again. Tied embeddings stay tied.
    pub fn make_trainable(&mut self, select: impl Fn(&str) -> bool) -> Result<Vec<(String, Var)>> {
        let mut made = Vec::new();
        let mut tensors = self.model.tensors_mut();
        if !self.config.tie_word_embeddings {
            self.lm_head.push_tensors_mut("lm_head", &mut tensors);
        }
        for (name, t) in tensors {
            if !select(&name) {
                continue;
            }
            let var = match self.vars.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => v.clone(),
                None => Var::from_tensor(t).ctx(name.clone())?,
            };
            *t = var.as_tensor().clone();
            made.push((name, var));
        }
        if self.config.tie_word_embeddings {
            let embed = self.model.embed_tokens.clone();
            self.lm_head.set_weight(embed, None);
        }
        for (name, var) in &made {
            if !self.vars.iter().any(|(n, _)| n == name) {
                self.vars.push((name.clone(), var.clone()));
            }
        }
        Ok(made)
    }

    /// A KV cache for this model's layer shape (slots are reserved per sequence), in the
    /// model's dtype as Hugging Face's caches are.
    pub fn new_kv_cache(&self) -> KvCache {
        KvCache::with_dtype(
            self.config.num_hidden_layers,
            self.config.num_key_value_heads,
            self.config.head_dim,
            KvDtype::for_model(self.dtype),
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
            if s.len == 0 {
                return Err(ModelError::Input(format!(
                    "forward_infer: the span of slot {} has no tokens",
                    s.slot
                )));
            }
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
        let last_only = rows == LogitRows::Last;
        let hidden = self.model.forward_infer(tokens, &ctx, cache, last_only)?;
        for s in spans {
            cache.advance(s.slot, s.len)?;
        }
        let head_rows = if last_only {
            InferRows::LastTokens
        } else {
            InferRows::Tokens(&groups)
        };
        self.lm_head.forward_infer(&hidden, head_rows)
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

/// Per-token sample ids `[B * T]` from each row's sample lengths.
fn segment_ids(segments: &[Vec<usize>]) -> Vec<u32> {
    segments
        .iter()
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .flat_map(|(i, &len)| std::iter::repeat_n(i as u32, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sample_of_a_row_gets_its_own_segment_id() {
        assert_eq!(segment_ids(&[vec![2, 1], vec![3]]), [0, 0, 1, 0, 0, 0]);
    }
}
