//! Batching for training: rows padded to the longest in the batch (`--padding_side`), with
//! the attention mask, position ids and per-token sample ids a model needs.
//!
//! Labels are NOT shifted here. As in Hugging Face (`ForCausalLMLoss`), `labels[t]` is the
//! token at position t and the loss shifts: the logits at position t are scored against
//! `labels[t + 1]`. `Batch::shifted_labels` gives that view for a loss that wants targets
//! aligned with logits. Every sample's first label is -100, so in a packed row nothing is
//! trained across a sample boundary.

use super::packing::TrainRow;
use crate::template::IGNORE_INDEX;

/// `--padding_side` (training; inference always pads left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    Left,
    #[default]
    Right,
}

impl PaddingSide {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "left" => Some(PaddingSide::Left),
            "right" => Some(PaddingSide::Right),
            _ => None,
        }
    }
}

/// A padded batch, every field row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// Unshifted; -100 on padding and untrained tokens.
    pub labels: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// Restart at 0 for each sample (packing) and are 0 on padding, as ms-swift pads them.
    pub position_ids: Vec<u32>,
    /// Which sample of its row a token belongs to (0 without packing); padding gets
    /// `u32::MAX`. Attention must stay within a segment.
    pub segment_ids: Vec<u32>,
}

/// Pads rows into batches.
#[derive(Debug, Clone, Copy)]
pub struct Collator {
    pub pad_token_id: u32,
    pub padding_side: PaddingSide,
}

impl Collator {
    pub fn collate(&self, rows: &[TrainRow]) -> Batch {
        let seq_len = rows.iter().map(TrainRow::len).max().unwrap_or(0);
        let n = rows.len() * seq_len;
        let mut b = Batch {
            batch_size: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            segment_ids: Vec::with_capacity(n),
        };
        for row in rows {
            let pad = seq_len - row.len();
            let left = self.padding_side == PaddingSide::Left;
            if left {
                b.push_padding(pad, self.pad_token_id);
            }
            b.input_ids.extend_from_slice(&row.input_ids);
            b.labels.extend_from_slice(&row.labels);
            b.attention_mask.extend(std::iter::repeat_n(1, row.len()));
            b.position_ids.extend(row.position_ids());
            b.segment_ids.extend(row.segment_ids());
            if !left {
                b.push_padding(pad, self.pad_token_id);
            }
        }
        b
    }
}

impl Batch {
    fn push_padding(&mut self, n: usize, pad: u32) {
        self.input_ids.extend(std::iter::repeat_n(pad, n));
        self.labels.extend(std::iter::repeat_n(IGNORE_INDEX, n));
        self.attention_mask.extend(std::iter::repeat_n(0, n));
        self.position_ids.extend(std::iter::repeat_n(0, n));
        self.segment_ids.extend(std::iter::repeat_n(u32::MAX, n));
    }

    /// Targets aligned with logits: position t is scored against `labels[t + 1]`; the last
    /// position of each row has none.
    pub fn shifted_labels(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.labels.len());
        for row in self.labels.chunks(self.seq_len.max(1)) {
            out.extend_from_slice(row.get(1..).unwrap_or_default());
            if !row.is_empty() {
                out.push(IGNORE_INDEX);
            }
        }
        out
    }

    /// Whether query token `i` may attend to key token `j` of row `r`: causal, both real,
    /// and in the same sample.
    pub fn may_attend(&self, r: usize, i: usize, j: usize) -> bool {
        let at = |k: usize| r * self.seq_len + k;
        j <= i
            && self.attention_mask[at(i)] == 1
            && self.attention_mask[at(j)] == 1
            && self.segment_ids[at(i)] == self.segment_ids[at(j)]
    }

    /// Tokens that carry a loss (after shifting).
    pub fn trained_tokens(&self) -> usize {
        self.shifted_labels()
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ids: &[u32], lens: &[usize]) -> TrainRow {
        TrainRow {
            input_ids: ids.to_vec(),
            labels: ids.iter().map(|&i| i64::from(i)).collect(),
            seq_lens: lens.to_vec(),
        }
    }

    #[test]
    fn right_and_left_padding() {
        let rows = [row(&[5, 6, 7], &[3]), row(&[8], &[1])];
        let right = Collator {
            pad_token_id: 0,
            padding_side: PaddingSide::Right,
        }
        .collate(&rows);
        assert_eq!(right.input_ids, [5, 6, 7, 8, 0, 0]);
        assert_eq!(right.attention_mask, [1, 1, 1, 1, 0, 0]);
        assert_eq!(right.labels, [5, 6, 7, 8, -100, -100]);
        let left = Collator {
            pad_token_id: 0,
            padding_side: PaddingSide::Left,
        }
        .collate(&rows);
        assert_eq!(left.input_ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(left.position_ids, [0, 1, 2, 0, 0, 0]);
        assert_eq!(left.shifted_labels(), [6, 7, -100, -100, 8, -100]);
    }

    #[test]
    fn packed_rows_attend_within_their_sample_only() {
        let b = Collator {
            pad_token_id: 0,
            padding_side: PaddingSide::Right,
        }
        .collate(&[row(&[1, 2, 3, 4, 5], &[2, 3])]);
        assert_eq!(b.position_ids, [0, 1, 0, 1, 2]);
        assert!(b.may_attend(0, 1, 0));
        assert!(
            !b.may_attend(0, 2, 1),
            "the second sample must not see the first"
        );
        assert!(b.may_attend(0, 4, 2));
        assert!(!b.may_attend(0, 2, 3), "causal");
    }
}
