//! What the trainer iterates: encoded rows in memory (optionally packed), or rows encoded
//! when asked for (`--lazy_tokenize`).

use std::sync::Arc;

use super::DataRow;
use super::encode::{self, Drops, EncodeOptions};
use super::error::{DataError, RowError};
use super::load::{self, Loaded};
use super::options::DataOptions;
use super::packing::{self, TrainRow};
use crate::template::Template;

/// Rows encoded on access; a row that fails is replaced by the next good one (ms-swift's
/// `LazyLLMDataset` retries with another row) unless `--strict`.
pub struct LazyDataset {
    rows: Vec<DataRow>,
    template: Arc<Template>,
    opts: EncodeOptions,
    strict: bool,
}

/// How many following rows a lazy dataset tries before giving up on an index.
const LAZY_TRIES: usize = 10;

impl LazyDataset {
    pub fn get(&self, index: usize) -> Result<TrainRow, DataError> {
        let n = self.rows.len();
        let mut last = None;
        for k in 0..LAZY_TRIES.min(n) {
            let row = &self.rows[(index + k) % n];
            match encode::encode_one(&self.template, row, self.opts) {
                Ok(e) => return Ok(e.into()),
                Err(error) if self.strict => {
                    return Err(DataError::BadRow {
                        origin: row.origin.clone(),
                        error,
                    });
                }
                Err(error) => {
                    tracing::warn!(origin = %row.origin, %error, "skipping a row that does not encode");
                    last = Some((row.origin.clone(), error));
                }
            }
        }
        let (origin, error) = last.unwrap_or_else(|| {
            (
                super::error::RowOrigin {
                    file: "dataset".into(),
                    position: super::error::Position::Line(0),
                },
                RowError::Format("the dataset is empty".into()),
            )
        });
        Err(DataError::BadRow { origin, error })
    }
}

/// A dataset ready for batching.
pub enum TrainData {
    Rows(Vec<TrainRow>),
    Lazy(LazyDataset),
}

impl TrainData {
    pub fn len(&self) -> usize {
        match self {
            TrainData::Rows(r) => r.len(),
            TrainData::Lazy(l) => l.rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Result<TrainRow, DataError> {
        match self {
            TrainData::Rows(r) => r.get(index).cloned().ok_or_else(|| {
                DataError::Args(format!("row {index} is out of range ({} rows)", r.len()))
            }),
            TrainData::Lazy(l) => l.get(index),
        }
    }
}

/// Training and validation data, encoded (or ready to encode lazily).
pub struct Prepared {
    pub train: TrainData,
    pub val: TrainData,
    /// The loaded rows (for `write_val_dataset` and inference over the validation split).
    pub loaded: Loaded,
    pub drops: Drops,
}

/// Loads, encodes and (with `--packing`) packs the datasets. Not for `--streaming`, which
/// reads through `stream::TrainStream` instead.
pub fn prepare(opts: &DataOptions, template: Arc<Template>) -> Result<Prepared, DataError> {
    if opts.packing && opts.encode.max_length.is_none() {
        return Err(DataError::Args(
            "--packing needs --max_length (the length of a packed row)".into(),
        ));
    }
    let loaded = load::load(opts)?;
    let mut drops = loaded.drops.clone();
    let pool = encode::thread_pool(opts.num_proc)?;
    let mut build = |rows: &[DataRow]| -> Result<TrainData, DataError> {
        if opts.lazy_tokenize && !opts.packing {
            return Ok(TrainData::Lazy(LazyDataset {
                rows: rows.to_vec(),
                template: template.clone(),
                opts: opts.encode,
                strict: opts.strict,
            }));
        }
        let (encoded, d) = encode::encode_all(&template, rows, opts.encode, &pool, opts.strict)?;
        drops.merge(d);
        Ok(TrainData::Rows(
            match (opts.packing, opts.encode.max_length) {
                (true, Some(max)) => packing::pack(encoded, max),
                _ => encoded.into_iter().map(TrainRow::from).collect(),
            },
        ))
    };
    let train = build(&loaded.train)?;
    let val = build(&loaded.val)?;
    // A streamed --dataset is read later (`stream`), never here.
    if !opts.streaming && !opts.dataset.is_empty() && train.is_empty() {
        return Err(DataError::Empty {
            dataset: "--dataset".into(),
            dropped: drops.count,
        });
    }
    if drops.count > 0 {
        tracing::warn!(
            dropped = drops.count,
            too_long = drops.too_long,
            "rows dropped while loading and encoding"
        );
    }
    Ok(Prepared {
        train,
        val,
        loaded,
        drops,
    })
}
