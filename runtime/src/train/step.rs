//! One micro-batch through the model: forward, loss and backward, with or without
//! gradient checkpointing; and the no-gradient evaluation forward.
//!
//! Gradient checkpointing keeps only each decoder layer's input and its mid-layer residual
//! (`h = x + attention(x)`) during the forward (the layer's graph is dropped at once), then
//! walks the layers backwards: it recomputes each half-layer from its saved input and
//! backpropagates the incoming gradient through it with the surrogate `sum(half(x) * g)`,
//! whose gradient is exactly the chain rule's (`ops::grad_seed`: the surrogate's gradient
//! without computing the surrogate). Peak memory is then one layer's activations
//! instead of all of them. The surrogates' values are never read, so the recomputation
//! skips each half's last projection (`o_proj`, `down_proj`): their input gradients need
//! only their inputs. Keeping `h` costs one more hidden-sized tensor per layer and saves
//! recomputing `o_proj`. The last layer is not recomputed at all: its graph is kept from
//! the forward, which ends just before the backward begins.
//!
//! The selective form (`--recompute_granularity selective`) also keeps the outputs of each
//! half's first products (q/k/v, gate/up) from the forward, so the recomputation replays
//! them instead of multiplying again and redoes only norms, RoPE, attention and SiLU: the
//! step costs about what it does without checkpointing, and memory sits between the two
//! (per token and layer it keeps `x`, `h`, q/k/v and gate/up, where no checkpointing keeps
//! every intermediate and every op's inputs).

use candle_core::{DType, Device, Tensor, Var};

use crate::data::Batch;
use crate::model::decoder::{DecoderLayer, LayerProducts, Products, TrainContext};
use crate::model::ops;
use crate::model::{CausalLm, ModelError, TrainBatch};
use crate::train::neftune::EmbedNoise;
use crate::train::optimizer::{AdamW, OptimizerError};

/// A collated batch as tensors, labels shifted to line up with the hidden states.
#[derive(Debug)]
pub struct MicroBatch {
    pub input_ids: Tensor,
    pub position_ids: Tensor,
    /// `[B, T]` i64, -100 where no loss is taken.
    pub labels: Tensor,
    /// Per row, the lengths of its runs of tokens of one sample (padding is a run too).
    pub sample_lengths: Vec<Vec<usize>>,
    /// Tokens that carry a loss.
    pub tokens: usize,
    /// NEFTune noise for this micro-batch's training forward (`None`: off). Evaluation
    /// ignores it.
    pub embed_noise: Option<EmbedNoise>,
    /// The tokens that carry a loss, when some do not (see [`HeadRows`]).
    pub head_rows: Option<HeadRows>,
}

/// The tokens of a micro-batch whose hidden states reach the loss (a label other than
/// -100), when that is not all of them: the last decoder layer runs its `o_proj` and MLP,
/// and the head its norm and `lm_head`, on these rows only
/// ([`crate::model::decoder::DecoderLayer::forward_train_rows`]).
#[derive(Debug)]
pub struct HeadRows {
    /// Ascending indices into the flattened `[B * T]` tokens.
    pub rows: Vec<usize>,
    /// `rows` as a u32 tensor, for `index_select`.
    pub index: Tensor,
    /// Their labels, `[rows]` i64.
    pub labels: Tensor,
}

impl HeadRows {
    /// The rows of the flattened shifted `labels` that carry a loss; `None` when all do
    /// (nothing to skip) or none do (the head then sees every row, as before, and the
    /// loss is an empty sum).
    pub fn of(labels: &[i64], device: &Device) -> candle_core::Result<Option<HeadRows>> {
        let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
        if rows.is_empty() || rows.len() == labels.len() {
            return Ok(None);
        }
        let index: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let kept: Vec<i64> = rows.iter().map(|&i| labels[i]).collect();
        Ok(Some(HeadRows {
            index: Tensor::from_vec(index, rows.len(), device)?,
            labels: Tensor::from_vec(kept, rows.len(), device)?,
            rows,
        }))
    }
}

/// Sum of the losses of a micro-batch, how many tokens they cover and how many of those
/// the model predicted right (token accuracy); how many sequences carry a loss and how many
/// of those had every label token right (ms-swift's `acc_strategy seq`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    pub loss_sum: f64,
    pub tokens: usize,
    pub correct: usize,
    pub sequences: usize,
    pub sequences_correct: usize,
}

impl LossStats {
    pub fn add(&mut self, other: LossStats) {
        self.loss_sum += other.loss_sum;
        self.tokens += other.tokens;
        self.correct += other.correct;
        self.sequences += other.sequences;
        self.sequences_correct += other.sequences_correct;
    }

    /// Mean loss per trained token (0 without tokens).
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.tokens.max(1) as f64
    }

    pub fn token_acc(&self) -> f64 {
        self.correct as f64 / self.tokens.max(1) as f64
    }

    /// The fraction of sequences predicted entirely right (ms-swift's `seq_acc`).
    pub fn seq_acc(&self) -> f64 {
        self.sequences_correct as f64 / self.sequences.max(1) as f64
    }
}

/// Sequence accuracy as ms-swift's `compute_acc(acc_strategy='seq')` counts it: every
/// sample (a run of `sample_lengths`; a packed row holds several, as its `cu_seqlens` do)
/// with at least one label is one sequence, correct when none of its label tokens is in
/// `missed`; samples without labels (padding, prompt-only) are skipped. `labels` is the
/// flattened shifted `[B, T]`, `missed` the ascending flat indices of wrong predictions.
/// Returns `(sequences, correct sequences)`.
pub fn sequence_accuracy(
    labels: &[i64],
    seq_len: usize,
    sample_lengths: &[Vec<usize>],
    missed: &[usize],
) -> (usize, usize) {
    let (mut sequences, mut correct) = (0, 0);
    for (row, lengths) in sample_lengths.iter().enumerate() {
        let mut start = row * seq_len;
        for &len in lengths {
            let span = start..(start + len).min(labels.len());
            start += len;
            if !labels[span.clone()].iter().any(|&l| l >= 0) {
                continue;
            }
            sequences += 1;
            // `missed` is sorted: is any of it inside the span?
            let first = missed.partition_point(|&i| i < span.start);
            if missed.get(first).is_none_or(|&i| i >= span.end) {
                correct += 1;
            }
        }
    }
    (sequences, correct)
}

/// Errors of a step; both sources already name what failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optimizer(#[from] OptimizerError),
    #[error("tensor op in the training step: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Runs of equal segment ids, per row: the attention blocks of a padded or packed row.
pub fn runs(segment_ids: &[u32], seq_len: usize) -> Vec<Vec<usize>> {
    segment_ids
        .chunks(seq_len.max(1))
        .map(|row| {
            let mut lens = Vec::new();
            let mut start = 0;
            for i in 1..=row.len() {
                if i == row.len() || row[i] != row[start] {
                    lens.push(i - start);
                    start = i;
                }
            }
            lens
        })
        .collect()
}

impl MicroBatch {
    pub fn from_batch(batch: &Batch, device: &Device) -> candle_core::Result<Self> {
        let shape = (batch.batch_size, batch.seq_len);
        Self::new(
            Tensor::from_slice(&batch.input_ids, shape, device)?,
            Tensor::from_slice(&batch.position_ids, shape, device)?,
            batch.shifted_labels(),
            runs(&batch.segment_ids, batch.seq_len),
        )
    }

    /// A micro-batch of `[B, T]` ids and positions with its shifted labels (flattened
    /// `[B * T]`, -100 where no loss is taken) and each row's sample lengths.
    pub fn new(
        input_ids: Tensor,
        position_ids: Tensor,
        labels: Vec<i64>,
        sample_lengths: Vec<Vec<usize>>,
    ) -> candle_core::Result<Self> {
        let device = input_ids.device().clone();
        let tokens = labels.iter().filter(|&&l| l >= 0).count();
        let head_rows = HeadRows::of(&labels, &device)?;
        Ok(MicroBatch {
            labels: Tensor::from_vec(labels, input_ids.shape(), &device)?,
            input_ids,
            position_ids,
            sample_lengths,
            tokens,
            embed_noise: None,
            head_rows,
        })
    }

    fn train_batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            input_ids: &self.input_ids,
            position_ids: Some(&self.position_ids),
            sample_lengths: Some(&self.sample_lengths),
        }
    }
}

/// Whether and how the training step recomputes activations in the backward
/// (`--gradient_checkpointing`, `--recompute_granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every layer's graph is kept from the forward.
    Off,
    /// Each layer keeps its input and mid-layer residual and is recomputed whole.
    Full,
    /// As `Full`, also keeping the layer's first products, which are not recomputed.
    Selective,
}

/// Forward and backward of one micro-batch; gradients of the summed loss are added to the
/// optimizer's accumulators.
pub fn forward_backward(
    model: &CausalLm,
    batch: &MicroBatch,
    optimizer: &mut AdamW,
    checkpointing: Checkpointing,
) -> Result<LossStats, StepError> {
    if checkpointing != Checkpointing::Off {
        let selective = checkpointing == Checkpointing::Selective;
        return forward_backward_checkpointed(model, batch, optimizer, selective);
    }
    let ce = head_loss(model, &hidden_train(model, batch)?, batch)?;
    let stats = stats_of(&ce, batch)?;
    let grads = ce.loss_sum.backward()?;
    optimizer.accumulate(&grads)?;
    Ok(stats)
}

/// The training forward to the final norm, with the micro-batch's NEFTune noise on the
/// embeddings: `[B, T, hidden]`, or `[head rows, hidden]` when only some tokens carry a
/// loss (see [`HeadRows`]).
pub fn hidden_train(model: &CausalLm, batch: &MicroBatch) -> Result<Tensor, StepError> {
    let ctx = model.train_context(&batch.train_batch())?;
    let (last, layers) = last_and_rest(model)?;
    let mut x = embed_train(model, batch)?;
    for layer in layers {
        x = layer.forward_train(&x, &ctx)?;
    }
    let top = last_layer(last, &x, &ctx, batch)?;
    Ok(model.model.norm.forward_train(&top)?)
}

/// The model's last decoder layer and the ones before it: the step treats the last apart
/// (its graph is kept under checkpointing; it runs on the head rows only).
fn last_and_rest(model: &CausalLm) -> Result<(&DecoderLayer, &[DecoderLayer]), StepError> {
    model
        .model
        .layers
        .split_last()
        .ok_or_else(|| ModelError::Input("the model has no decoder layers".into()).into())
}

/// The last decoder layer, on the head rows only when some tokens carry no loss.
fn last_layer(
    last: &DecoderLayer,
    x: &Tensor,
    ctx: &TrainContext,
    batch: &MicroBatch,
) -> Result<Tensor, StepError> {
    Ok(match &batch.head_rows {
        Some(head) => last.forward_train_rows(x, ctx, &head.index)?,
        None => last.forward_train(x, ctx)?,
    })
}

/// Fused `lm_head` and cross-entropy over what [`hidden_train`] returned; `missed` is
/// given as indices into the flattened `[B * T]` tokens either way.
fn head_loss(
    model: &CausalLm,
    hidden: &Tensor,
    batch: &MicroBatch,
) -> Result<crate::model::ops::CrossEntropy, StepError> {
    let Some(head) = &batch.head_rows else {
        return Ok(model.loss_train(hidden, &batch.labels)?);
    };
    let mut ce = model.loss_train(hidden, &head.labels)?;
    for m in &mut ce.missed {
        *m = head.rows[*m];
    }
    Ok(ce)
}

/// The input embeddings of a training forward, NEFTune noise included.
fn embed_train(model: &CausalLm, batch: &MicroBatch) -> Result<Tensor, StepError> {
    let embedded = model.model.embed_train(&batch.input_ids)?;
    Ok(match &batch.embed_noise {
        Some(noise) => noise.apply(&embedded)?,
        None => embedded,
    })
}

fn stats_of(
    ce: &crate::model::ops::CrossEntropy,
    batch: &MicroBatch,
) -> Result<LossStats, StepError> {
    let seq_len = batch.labels.dim(1)?;
    let labels = batch.labels.flatten_all()?.to_vec1::<i64>()?;
    let (sequences, sequences_correct) =
        sequence_accuracy(&labels, seq_len, &batch.sample_lengths, &ce.missed);
    Ok(LossStats {
        loss_sum: ce.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        tokens: ce.count,
        correct: ce.correct,
        sequences,
        sequences_correct,
    })
}

/// Checkpointed forward and backward; `selective` keeps each layer's first products.
fn forward_backward_checkpointed(
    model: &CausalLm,
    batch: &MicroBatch,
    optimizer: &mut AdamW,
    selective: bool,
) -> Result<LossStats, StepError> {
    let ctx = model.train_context(&batch.train_batch())?;
    let (last, layers) = last_and_rest(model)?;
    // Forward: keep each layer's input and its mid-layer residual (and with `selective`
    // its first products), drop its graph.
    let embedded = embed_train(model, batch)?;
    // The first layer's input gradient only feeds the embeddings: with a frozen embedding
    // table it is not computed (q/k/v's `g W` are skipped), as autograd does without
    // checkpointing.
    let needs_input_grad = |index: usize| index > 0 || embedded.track_op();
    let mut saved = Vec::with_capacity(layers.len());
    let mut x = embedded.detach();
    for layer in layers {
        let mut kept = selective.then(LayerProducts::default);
        let (h, y) = layer.forward_train_halves(&x, &ctx, kept.as_mut())?;
        saved.push((x, h.detach(), kept));
        x = y.detach();
    }
    // The last layer keeps its graph: the backward starts right after it, so recomputing
    // it would redo the forward just done (one layer's recompute saved per step). The
    // cost is that layer's activations living through the head's loss and backward:
    // +0.11 GiB peak (0.95 -> 1.06) on the bench's 8-layer model at 8 x 256 tokens.
    let last_input = needs_input_grad(layers.len())
        .then(|| Var::from_tensor(&x))
        .transpose()?;
    let top = last_layer(
        last,
        last_input.as_ref().map_or(&x, |v| v.as_tensor()),
        &ctx,
        batch,
    )?;
    // The head: final norm and fused lm_head + loss.
    let ce = head_loss(model, &model.model.norm.forward_train(&top)?, batch)?;
    let stats = stats_of(&ce, batch)?;
    let grads = ce.loss_sum.backward()?;
    optimizer.accumulate(&grads)?;
    let mut g = match &last_input {
        Some(input) => grads
            .get(input.as_tensor())
            .cloned()
            .ok_or_else(|| ModelError::Input("no gradient reached a layer input".into()))?,
        None => return Ok(stats),
    };
    drop(grads);
    // Backward: recompute one half-layer at a time, MLP then attention. Only the
    // surrogates' gradients are used, never the halves' values (see `attention_half`).
    for (index, (layer, (input, mid, kept))) in layers.iter().zip(saved).enumerate().rev() {
        let (attention, mlp) = match &kept {
            Some(k) => (Products::Reuse(&k.attention), Products::Reuse(&k.mlp)),
            None => (Products::Compute, Products::Compute),
        };
        g = backpropagate(&mid, &g, optimizer, true, |h| layer.mlp_half(h, true, mlp))?
            .ok_or_else(|| ModelError::Input("no gradient reached a layer's residual".into()))?;
        let input_grad = needs_input_grad(index);
        match backpropagate(&input, &g, optimizer, input_grad, |x| {
            layer.attention_half(x, &ctx, true, attention)
        })? {
            Some(gx) => g = gx,
            None if input_grad => {
                return Err(ModelError::Input("no gradient reached a layer input".into()).into());
            }
            None => {}
        }
    }
    if embedded.track_op() {
        let grads = ops::grad_seed(&embedded, &g)?.backward()?;
        optimizer.accumulate(&grads)?;
    }
    Ok(stats)
}

/// Recomputes `half` from its saved `input` and backpropagates the incoming gradient `g`
/// through it (`grad_seed`: the surrogate `sum(half(input) * g)` without its passes),
/// adding the parameters' gradients to the optimizer; returns the input's gradient when
/// `input_grad` asks for it.
fn backpropagate(
    input: &Tensor,
    g: &Tensor,
    optimizer: &mut AdamW,
    input_grad: bool,
    half: impl FnOnce(&Tensor) -> Result<Tensor, ModelError>,
) -> Result<Option<Tensor>, StepError> {
    let var = input_grad.then(|| Var::from_tensor(input)).transpose()?;
    let x = var.as_ref().map_or(input, |v| v.as_tensor());
    let grads = ops::grad_seed(&half(x)?, g)?.backward()?;
    optimizer.accumulate(&grads)?;
    Ok(var.and_then(|v| grads.get(v.as_tensor()).cloned()))
}

/// Loss and accuracy of a micro-batch without any gradient work (and never NEFTune noise).
pub fn evaluate(model: &CausalLm, batch: &MicroBatch) -> Result<LossStats, StepError> {
    let ctx = model.train_context(&batch.train_batch())?;
    let (last, layers) = last_and_rest(model)?;
    // No gradient work: each layer's graph is dropped as soon as its output exists.
    let mut x = model.model.embed_train(&batch.input_ids)?.detach();
    for layer in layers {
        x = layer.forward_train(&x, &ctx)?.detach();
    }
    let top = last_layer(last, &x, &ctx, batch)?.detach();
    let ce = head_loss(model, &model.model.norm.forward_train(&top)?, batch)?;
    stats_of(&ce, batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_rows_at_sample_and_padding_boundaries() {
        let seg = [0, 0, 1, u32::MAX, u32::MAX, 0, 0, 0];
        assert_eq!(runs(&seg, 4), vec![vec![2, 1, 1], vec![1, 3]]);
        // A row whose padding (MAX) comes first.
        assert_eq!(runs(&[7, 7, 0, 0], 4), vec![vec![2, 2]]);
    }

    #[test]
    fn sequence_accuracy_counts_samples_with_labels_like_ms_swift() {
        const I: i64 = -100;
        // Row 0: two packed samples (3 + 3 tokens); row 1: one sample then padding.
        let labels = [I, 5, 6, I, 7, 8, /* row 1 */ I, 9, 9, I, I, I];
        let lengths = vec![vec![3, 3], vec![3, 3]];
        // Everything right: three sequences (row 1's padding run has no labels).
        assert_eq!(sequence_accuracy(&labels, 6, &lengths, &[]), (3, 3));
        // One miss in the second packed sample.
        assert_eq!(sequence_accuracy(&labels, 6, &lengths, &[4]), (3, 2));
        // Misses on every sequence.
        assert_eq!(sequence_accuracy(&labels, 6, &lengths, &[1, 5, 8]), (3, 0));
        // A sample with no label at all is skipped, not scored correct.
        let prompt_only = [I, I, I, I, 1, I];
        assert_eq!(
            sequence_accuracy(&prompt_only, 6, &[vec![3, 3]], &[4]),
            (1, 0)
        );
    }

    #[test]
    fn seq_acc_and_token_acc_differ_on_the_same_predictions() {
        let mut s = LossStats::default();
        s.add(LossStats {
            loss_sum: 1.0,
            tokens: 4,
            correct: 3,
            sequences: 2,
            sequences_correct: 1,
        });
        assert_eq!(s.token_acc(), 0.75);
        assert_eq!(s.seq_acc(), 0.5);
    }
}
