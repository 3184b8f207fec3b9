//! Loading datasets into memory: resolve each `--dataset` to files, read and preprocess
//! every row (bad rows dropped and counted, or the first one an error with `--strict`),
//! then sample and split (`sampling`). Also writes `val_dataset.jsonl`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::DataRow;
use super::encode::Drops;
use super::error::DataError;
use super::options::DataOptions;
use super::preprocess::Preprocess;
use super::read::{self, FileFormat};
use super::registry;
use super::sampling::{self, SplitError};
use super::source::{ByteSource, LocalFile};
use super::spec::DatasetSpec;
use crate::storage::remote_bytes::RemoteBytes;

/// One file of a dataset and how its rows are preprocessed.
pub struct DatasetFile {
    pub source: Box<dyn ByteSource>,
    pub format: FileFormat,
    pub preprocess: Preprocess,
}

/// The files behind a `--dataset` entry: a registered name, a file, or a folder (every
/// .jsonl/.json/.csv/.txt file in it, recursively, in name order; `folder:sub` reads
/// `folder/sub`).
pub fn resolve(spec: &DatasetSpec, base: &Preprocess) -> Result<Vec<DatasetFile>, DataError> {
    let bad = |reason: String| DataError::BadSpec {
        arg: spec.arg,
        spec: spec.raw.clone(),
        reason,
    };
    if let Some(found) = registry::lookup(&spec.path, &spec.subsets, base) {
        return Ok(found
            .map_err(bad)?
            .into_iter()
            .map(|(source, preprocess)| DatasetFile {
                source: Box::new(source),
                format: FileFormat::JsonLines,
                preprocess,
            })
            .collect());
    }
    if crate::storage::location::is_remote_uri(&spec.path) {
        // Only `--streaming` leaves a bucket dataset remote (`storage::localize`): its
        // rows are read with ranged GETs as training goes.
        if !spec.subsets.is_empty() {
            return Err(bad("a bucket file has no subsets".into()));
        }
        let source = RemoteBytes::open(&spec.path).map_err(|e| bad(e.to_string()))?;
        let format = read::format_of(&source)?;
        return Ok(vec![DatasetFile {
            source: Box::new(source),
            format,
            preprocess: base.clone(),
        }]);
    }
    let path = Path::new(&spec.path);
    let file = |p: PathBuf| -> Result<DatasetFile, DataError> {
        let source = LocalFile::new(p);
        let format = read::format_of(&source)?;
        Ok(DatasetFile {
            source: Box::new(source),
            format,
            preprocess: base.clone(),
        })
    };
    if path.is_file() {
        if !spec.subsets.is_empty() {
            return Err(bad(
                "a file has no subsets (':' is only for folders and registered datasets)".into(),
            ));
        }
        return Ok(vec![file(path.to_path_buf())?]);
    }
    if path.is_dir() {
        let dirs: Vec<PathBuf> = if spec.subsets.is_empty() {
            vec![path.to_path_buf()]
        } else {
            spec.subsets.iter().map(|s| path.join(s)).collect()
        };
        let mut files = Vec::new();
        for dir in dirs {
            if !dir.is_dir() {
                return Err(bad(format!(
                    "subset folder {} does not exist",
                    dir.display()
                )));
            }
            let mut found = Vec::new();
            collect_files(&dir, &mut found)?;
            found.sort();
            files.extend(found.into_iter().map(file).collect::<Result<Vec<_>, _>>()?);
        }
        if files.is_empty() {
            return Err(bad(
                "the folder holds no .jsonl, .json, .csv or .txt files".into()
            ));
        }
        return Ok(files);
    }
    Err(bad(
        "no such file or folder (kubeswift reads local files, folders and its registered \
         datasets: swift/self-cognition; it does not download from dataset hubs)"
            .into(),
    ))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let io = |e| DataError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.to_str().and_then(FileFormat::of).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Rows of one dataset after preprocessing, and what was dropped.
pub struct DatasetRows {
    pub rows: Vec<DataRow>,
    pub drops: Drops,
}

/// Reads and preprocesses every row of one dataset. `seen_columns` collects which
/// `--columns` keys some row had.
pub fn read_dataset(
    spec: &DatasetSpec,
    opts: &DataOptions,
    rng: &mut StdRng,
    seen_columns: &mut HashSet<String>,
) -> Result<DatasetRows, DataError> {
    let mut rows = Vec::new();
    let mut drops = Drops::default();
    for file in resolve(spec, &opts.preprocess)? {
        for raw in read::rows(file.source.as_ref(), file.format)? {
            let (origin, fields) = raw?;
            let result = fields.and_then(|fields| {
                note_columns(&fields, &opts.preprocess, seen_columns);
                file.preprocess.sample(fields, rng)
            });
            match result {
                Ok(sample) => rows.push(DataRow { origin, sample }),
                Err(error) => drops.record(origin, error, opts.strict)?,
            }
        }
    }
    if rows.is_empty() {
        // Every row dropped: a --columns name no row has (a typo) is the likelier cause,
        // and names the fix, where "no usable rows" would not.
        check_columns(&opts.preprocess, seen_columns)?;
        return Err(DataError::Empty {
            dataset: spec.raw.clone(),
            dropped: drops.count,
        });
    }
    Ok(DatasetRows { rows, drops })
}

pub(crate) fn note_columns(
    fields: &serde_json::Map<String, serde_json::Value>,
    preprocess: &Preprocess,
    seen: &mut HashSet<String>,
) {
    for (from, _) in &preprocess.columns {
        if fields.keys().any(|k| k.eq_ignore_ascii_case(from)) {
            seen.insert(from.clone());
        }
    }
}

/// `--columns` keys no row had: almost always a typo, so an error.
pub(crate) fn check_columns(
    preprocess: &Preprocess,
    seen: &HashSet<String>,
) -> Result<(), DataError> {
    let missing: Vec<&str> = preprocess
        .columns
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !seen.contains(*k))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DataError::Columns(format!(
        "no row of the datasets has a column named {} (names match case-insensitively)",
        missing
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The training and validation rows, before encoding.
#[derive(Debug, Default)]
pub struct Loaded {
    pub train: Vec<DataRow>,
    pub val: Vec<DataRow>,
    /// The validation rows were split off the training data (so they are written to
    /// `val_dataset.jsonl`, as ms-swift does).
    pub val_is_split: bool,
    pub drops: Drops,
}

fn split_error(spec: &DatasetSpec, ratio: f64, e: SplitError) -> DataError {
    match e {
        SplitError::ValTooLarge {
            requested,
            available,
        } => DataError::ValSampleTooLarge {
            arg: spec.arg,
            spec: spec.raw.clone(),
            requested,
            available,
        },
        SplitError::TooSmall { .. } => DataError::Split {
            ratio,
            reason: format!("'{}': {e}", spec.raw),
        },
    }
}

/// Loads `--dataset` (split by `--split_dataset_ratio`) and `--val_dataset` into memory.
/// With `--streaming` only the validation datasets are loaded here (see `stream`).
pub fn load(opts: &DataOptions) -> Result<Loaded, DataError> {
    // One generator for sampling and splitting, in dataset order, as ms-swift shares one
    // RandomState; another for picking among multiple responses of a row.
    let mut split_rng = StdRng::seed_from_u64(opts.data_seed);
    let mut row_rng = StdRng::seed_from_u64(opts.data_seed.wrapping_add(1));
    let mut seen = HashSet::new();
    let mut loaded = Loaded {
        val_is_split: opts.val_dataset.is_empty() && opts.split_dataset_ratio > 0.0,
        ..Loaded::default()
    };
    let train_specs: &[DatasetSpec] = if opts.streaming { &[] } else { &opts.dataset };
    for (specs, ratio) in [
        (train_specs, opts.split_dataset_ratio),
        (&opts.val_dataset[..], 1.0),
    ] {
        for spec in specs {
            let DatasetRows { rows, drops } = read_dataset(spec, opts, &mut row_rng, &mut seen)?;
            loaded.drops.merge(drops);
            let split = sampling::split(rows.len(), spec.sample, ratio, &mut split_rng)
                .map_err(|e| split_error(spec, ratio, e))?;
            loaded
                .train
                .extend(split.train.iter().map(|&i| rows[i].clone()));
            loaded
                .val
                .extend(split.val.iter().map(|&i| rows[i].clone()));
        }
    }
    if !opts.streaming {
        check_columns(&opts.preprocess, &seen)?;
    }
    if loaded.drops.count > 0 {
        tracing::warn!(
            dropped = loaded.drops.count,
            too_long = loaded.drops.too_long,
            "bad dataset rows were dropped (--strict true makes the first one an error)"
        );
    }
    Ok(loaded)
}

/// Writes the validation rows split off the training data to `<output_dir>/val_dataset.jsonl`
/// (ms-swift's `_save_val_dataset`; nothing when `--val_dataset` was given). The file is
/// written under a temporary name and renamed, so it is never seen half-written.
pub fn write_val_dataset(loaded: &Loaded, output_dir: &Path) -> Result<Option<PathBuf>, DataError> {
    if !loaded.val_is_split || loaded.val.is_empty() {
        return Ok(None);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(output_dir).map_err(io(output_dir))?;
    let path = output_dir.join("val_dataset.jsonl");
    let tmp = output_dir.join(".val_dataset.jsonl.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    for row in &loaded.val {
        serde_json::to_writer(&mut out, &row.sample.to_json()).map_err(|e| DataError::Io {
            path: tmp.clone(),
            source: e.into(),
        })?;
        out.write_all(b"\n").map_err(io(&tmp))?;
    }
    out.into_inner()
        .map_err(|e| DataError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Some(path))
}
