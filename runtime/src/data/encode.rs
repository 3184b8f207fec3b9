//! Samples to training rows: template encoding, `--max_length` with
//! `--truncation_strategy`, and the drop accounting `--strict` decides about.

use rayon::prelude::*;

use super::DataRow;
use super::error::{DataError, RowError, RowOrigin};
use crate::template::{Encoded, IGNORE_INDEX, LossScale, Template};

/// `--truncation_strategy`: what happens to a sample longer than `--max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Drop the sample (ms-swift raises MaxLengthError and the row is skipped).
    #[default]
    Delete,
    /// Keep the last max_length tokens.
    Left,
    /// Keep the first max_length tokens.
    Right,
}

impl Truncation {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "delete" => Some(Truncation::Delete),
            "left" => Some(Truncation::Left),
            "right" => Some(Truncation::Right),
            _ => None,
        }
    }
}

/// Applies `--max_length`. After cutting, the first label is ignored again: it is the target
/// of no position, and in a packed row it would otherwise be trained from the previous
/// sample's last token (ms-swift only clears it before truncating).
pub fn truncate(
    mut e: Encoded,
    max_length: Option<usize>,
    strategy: Truncation,
) -> Result<Encoded, RowError> {
    let Some(max) = max_length else {
        return Ok(e);
    };
    let length = e.input_ids.len().max(e.labels.len());
    if length <= max {
        return Ok(e);
    }
    match strategy {
        Truncation::Delete => {
            return Err(RowError::TooLong {
                length,
                max_length: max,
            });
        }
        Truncation::Left => {
            e.input_ids.drain(..e.input_ids.len() - max);
            e.labels.drain(..e.labels.len() - max);
        }
        Truncation::Right => {
            e.input_ids.truncate(max);
            e.labels.truncate(max);
        }
    }
    if let Some(first) = e.labels.first_mut() {
        *first = IGNORE_INDEX;
    }
    Ok(e)
}

/// How samples are encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeOptions {
    pub loss_scale: LossScale,
    pub max_length: Option<usize>,
    pub truncation: Truncation,
}

/// Encodes one sample.
pub fn encode_one(
    template: &Template,
    row: &DataRow,
    opts: EncodeOptions,
) -> Result<Encoded, RowError> {
    let encoded = template
        .encode(&row.sample.messages, opts.loss_scale)
        .map_err(|e| RowError::Template(e.to_string()))?;
    let length = encoded.input_ids.len();
    let encoded = truncate(encoded, opts.max_length, opts.truncation)?;
    if encoded.labels.iter().all(|&l| l == IGNORE_INDEX) {
        let truncated_to = opts.max_length.filter(|&m| length > m);
        return Err(RowError::NoLoss { truncated_to });
    }
    Ok(encoded)
}

/// Rows that were dropped, and the first few reasons (ms-swift logs ten tracebacks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drops {
    pub count: usize,
    pub too_long: usize,
    pub examples: Vec<(RowOrigin, RowError)>,
}

const EXAMPLES_KEPT: usize = 10;

impl Drops {
    /// Counts a bad row, or fails with it under `--strict`.
    pub fn record(
        &mut self,
        origin: RowOrigin,
        error: RowError,
        strict: bool,
    ) -> Result<(), DataError> {
        if strict {
            return Err(DataError::BadRow { origin, error });
        }
        if self.examples.len() < EXAMPLES_KEPT {
            tracing::warn!(%origin, %error, "dropping a bad row (--strict true stops here instead)");
            self.examples.push((origin, error.clone()));
        }
        if matches!(error, RowError::TooLong { .. }) {
            self.too_long += 1;
        }
        self.count += 1;
        Ok(())
    }

    pub fn merge(&mut self, other: Drops) {
        self.count += other.count;
        self.too_long += other.too_long;
        let room = EXAMPLES_KEPT.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// A pool of `--dataset_num_proc` threads for tokenisation.
pub fn thread_pool(num_proc: usize) -> Result<rayon::ThreadPool, DataError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(num_proc.max(1))
        .thread_name(|i| format!("tokenize-{i}"))
        .build()
        .map_err(|e| DataError::Args(format!("--dataset_num_proc: cannot start threads: {e}")))
}

/// Encodes rows in parallel, keeping their order; bad rows are dropped and counted (or, with
/// `strict`, the first bad row in order is the error).
pub fn encode_all(
    template: &Template,
    rows: &[DataRow],
    opts: EncodeOptions,
    pool: &rayon::ThreadPool,
    strict: bool,
) -> Result<(Vec<Encoded>, Drops), DataError> {
    let results: Vec<Result<Encoded, RowError>> = pool.install(|| {
        rows.par_iter()
            .map(|row| encode_one(template, row, opts))
            .collect()
    });
    let mut drops = Drops::default();
    let mut out = Vec::with_capacity(rows.len());
    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(e) => out.push(e),
            Err(error) => drops.record(row.origin.clone(), error, strict)?,
        }
    }
    Ok((out, drops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> Encoded {
        Encoded {
            input_ids: (0..n).collect(),
            labels: (0..n).map(i64::from).collect(),
        }
    }

    #[test]
    fn truncation_strategies() {
        assert!(matches!(
            truncate(sample(6), Some(4), Truncation::Delete),
            Err(RowError::TooLong {
                length: 6,
                max_length: 4
            })
        ));
        let left = truncate(sample(6), Some(4), Truncation::Left).unwrap();
        assert_eq!(left.input_ids, [2, 3, 4, 5]);
        assert_eq!(left.labels, [IGNORE_INDEX, 3, 4, 5]);
        let right = truncate(sample(6), Some(4), Truncation::Right).unwrap();
        assert_eq!(right.input_ids, [0, 1, 2, 3]);
        assert_eq!(
            truncate(sample(4), Some(4), Truncation::Delete).unwrap(),
            sample(4)
        );
        assert_eq!(
            truncate(sample(9), None, Truncation::Delete).unwrap(),
            sample(9)
        );
    }
}
