//! From weighted pieces to token ids and labels: ms-swift's `_simplify_context_list`,
//! `_encode_context_list` and `_add_dynamic_eos`.
//!
//! Adjacent text pieces with the same weight are joined before tokenizing, exactly as
//! ms-swift does: BPE merges may cross what were piece boundaries, so tokenizing piece by
//! piece would give different ids.

use tokenizers::Tokenizer;

use super::context::Piece;
use super::error::TemplateError;
use super::meta::Chunk;

/// The label of a token that is not trained (PyTorch's cross-entropy `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Ids and per-token weights of a piece list.
pub(crate) struct Tokens {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Tokenizes text without the tokenizer's own special tokens (HF `add_special_tokens=False`).
pub(crate) fn tokenize(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, TemplateError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let encoding = tokenizer
        .encode_fast(text, false)
        .map_err(TemplateError::tokenizer)?;
    Ok(encoding.get_ids().to_vec())
}

/// Joins adjacent text pieces of equal weight; id pieces stay on their own.
fn simplify(pieces: &[Piece]) -> Vec<(Chunk, f32)> {
    let mut out: Vec<(Chunk, f32)> = Vec::new();
    let mut text = String::new();
    let mut has_text = false;
    // ms-swift starts its running weight at 0, so a first text piece of weight 1 starts a
    // new group without flushing anything.
    let mut weight = 0.0f32;
    for piece in pieces {
        match &piece.chunk {
            Chunk::Text(s) if piece.weight == weight => {
                text.push_str(s);
                has_text = true;
            }
            other => {
                if has_text {
                    out.push((Chunk::Text(std::mem::take(&mut text)), weight));
                    has_text = false;
                }
                match other {
                    Chunk::Text(s) => {
                        text.push_str(s);
                        has_text = true;
                    }
                    ids => out.push((ids.clone(), piece.weight)),
                }
                weight = piece.weight;
            }
        }
    }
    if has_text {
        out.push((Chunk::Text(text), weight));
    }
    out
}

/// Tokenizes the pieces and marks trained tokens.
pub(crate) fn encode(tokenizer: &Tokenizer, pieces: &[Piece]) -> Result<Tokens, TemplateError> {
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    for (chunk, weight) in simplify(pieces) {
        let ids = match chunk {
            Chunk::Text(s) => tokenize(tokenizer, &s)?,
            Chunk::Ids(ids) => ids,
        };
        if weight > 0.0 {
            labels.extend(ids.iter().map(|&id| i64::from(id)));
        } else {
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, ids.len()));
        }
        input_ids.extend(ids);
    }
    Ok(Tokens { input_ids, labels })
}

/// Trains the end-of-turn tokens that close a trained response when the template writes
/// them as part of the untrained separator (`<|im_end|>` in `<|im_end|>\n`): after a trained
/// span, an untrained gap that starts with the suffix ids, followed by another trained span,
/// gets those ids trained (ms-swift's `_add_dynamic_eos`).
pub(crate) fn add_dynamic_eos(input_ids: &[u32], labels: &mut [i64], suffix: &[u32]) {
    let n = suffix.len();
    let mut start = 0;
    for i in 1..labels.len() {
        if labels[i - 1] >= 0 && labels[i] == IGNORE_INDEX {
            start = i;
        }
        if start > 0 && labels[i - 1] == IGNORE_INDEX && labels[i] >= 0 {
            let gap = i - start;
            if gap >= n && input_ids[start..start + n] == *suffix {
                for (label, &id) in labels[start..start + n].iter_mut().zip(suffix) {
                    *label = i64::from(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::context::Kind;
    use super::*;

    fn piece(chunk: Chunk, weight: f32) -> Piece {
        Piece {
            chunk,
            kind: Kind::Other,
            weight,
        }
    }

    #[test]
    fn equal_weight_text_is_joined_and_ids_break_groups() {
        let pieces = [
            piece(Chunk::Ids(vec![1]), 0.0),
            piece(Chunk::text("a"), 0.0),
            piece(Chunk::text("b"), 0.0),
            piece(Chunk::text("c"), 1.0),
            piece(Chunk::text(""), 1.0),
            piece(Chunk::text("d"), 0.0),
        ];
        let got = simplify(&pieces);
        assert_eq!(
            got,
            vec![
                (Chunk::Ids(vec![1]), 0.0),
                (Chunk::text("ab"), 0.0),
                (Chunk::text("c"), 1.0),
                (Chunk::text("d"), 0.0),
            ]
        );
    }

    #[test]
    fn dynamic_eos_trains_the_separator_between_trained_spans_only() {
        let ids = [5, 6, 9, 7, 8, 6, 9];
        let mut labels = [-100, 6, -100, -100, -100, 6, -100];
        add_dynamic_eos(&ids, &mut labels, &[9]);
        assert_eq!(labels, [-100, 6, 9, -100, -100, 6, -100]);
    }
}
