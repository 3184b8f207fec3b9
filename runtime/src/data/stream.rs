//! `--streaming`: rows read, preprocessed and tokenized lazily, one file at a time, never
//! the whole dataset in memory. `#N` takes the first N good rows of a dataset (ms-swift's
//! `take`, no shuffling). `--dataset_num_proc` tokenizes a window of rows in parallel, and
//! `--packing` packs each window (ms-swift's `IterablePackingDataset`, window 128, the last
//! bin carried into the next window).
//!
//! A `Shard` makes each rank read its own part: JSON Lines and text files by byte range
//! (ranged reads, see `source`; a bucket file through `storage::remote_bytes`), other
//! formats by row index modulo the world size; `#N` is split over the shards. The trainer
//! turns a `TrainStream` into micro-batches, restarts it and resumes it in
//! `train::streamed`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use super::DataRow;
use super::encode::{self, Drops};
use super::error::{DataError, RowError};
use super::load::{self, DatasetFile};
use super::options::DataOptions;
use super::packing::{self, TrainRow};
use super::read::{self, FileFormat, RawRow};
use super::source::{LineReader, shard_range};
use super::spec::DatasetSpec;
use crate::template::{Encoded, Template};

/// Which part of the data this process reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: u64,
    pub world: u64,
}

impl Shard {
    /// The whole dataset.
    pub const ALL: Shard = Shard { rank: 0, world: 1 };

    /// This shard's part of `#N`: the N rows are split over the ranks, the first
    /// `N % world` taking one more, so a job takes N rows whatever its world size (as long
    /// as every shard holds its share).
    pub fn share_of(&self, n: usize) -> usize {
        let world = self.world.max(1) as usize;
        let rank = self.rank as usize;
        n / world + usize::from(rank < n % world)
    }
}

type RawRows = Box<dyn Iterator<Item = Result<RawRow, DataError>> + Send>;

struct DatasetState {
    spec: DatasetSpec,
    files: VecDeque<DatasetFile>,
    /// Rows still to take (`#N`).
    remaining: Option<usize>,
    produced: usize,
}

/// Preprocessed rows of the `--dataset` entries, read lazily.
pub struct RowStream {
    datasets: VecDeque<DatasetState>,
    current: Option<(RawRows, FileFormat, super::preprocess::Preprocess)>,
    shard: Shard,
    /// Row counter for modulo sharding of formats read whole.
    index_in_file: u64,
    rng: StdRng,
    strict: bool,
    opts_columns: super::preprocess::Preprocess,
    seen_columns: HashSet<String>,
    drops: Drops,
    failed: bool,
}

impl RowStream {
    /// Resolves every dataset up front (so a missing file fails before training starts).
    pub fn new(opts: &DataOptions, shard: Shard) -> Result<Self, DataError> {
        let datasets = opts
            .dataset
            .iter()
            .map(|spec| {
                Ok(DatasetState {
                    files: load::resolve(spec, &opts.preprocess)?.into(),
                    remaining: spec.sample.map(|n| shard.share_of(n)),
                    spec: spec.clone(),
                    produced: 0,
                })
            })
            .collect::<Result<VecDeque<_>, DataError>>()?;
        Ok(RowStream {
            datasets,
            current: None,
            shard,
            index_in_file: 0,
            rng: StdRng::seed_from_u64(opts.data_seed.wrapping_add(1)),
            strict: opts.strict,
            opts_columns: opts.preprocess.clone(),
            seen_columns: HashSet::new(),
            drops: Drops::default(),
            failed: false,
        })
    }

    /// Rows dropped so far.
    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    fn open(&self, file: &DatasetFile) -> Result<RawRows, DataError> {
        let source = file.source.as_ref();
        let io = |e| DataError::Io {
            path: source.name().into(),
            source: e,
        };
        match file.format {
            FileFormat::JsonLines | FileFormat::Text if self.shard.world > 1 => {
                let size = source.size().map_err(io)?;
                let range = shard_range(size, self.shard.rank, self.shard.world);
                let lines =
                    LineReader::open_range(source, range.start, Some(range.end)).map_err(io)?;
                Ok(Box::new(read::rows_of_lines(lines, file.format)))
            }
            format => read::rows(source, format),
        }
    }

    /// The next raw row of the current dataset, opening files as needed; `None` when the
    /// dataset is done.
    fn next_raw(&mut self) -> Option<Result<(RawRow, super::preprocess::Preprocess), DataError>> {
        loop {
            let state = self.datasets.front_mut()?;
            if state.remaining == Some(0) {
                return None;
            }
            if self.current.is_none() {
                let file = state.files.pop_front()?;
                let rows = match self.open(&file) {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                };
                self.index_in_file = 0;
                self.current = Some((rows, file.format, file.preprocess));
            }
            let Some((rows, format, pre)) = &mut self.current else {
                continue;
            };
            match rows.next() {
                None => self.current = None,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(raw)) => {
                    let i = self.index_in_file;
                    self.index_in_file += 1;
                    let by_index = !matches!(format, FileFormat::JsonLines | FileFormat::Text);
                    if by_index && self.shard.world > 1 && i % self.shard.world != self.shard.rank {
                        continue;
                    }
                    return Some(Ok((raw, pre.clone())));
                }
            }
        }
    }
}

impl Iterator for RowStream {
    type Item = Result<DataRow, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let fail = |s: &mut Self, e: DataError| {
            s.failed = true;
            Some(Err(e))
        };
        loop {
            match self.next_raw() {
                Some(Err(e)) => return fail(self, e),
                Some(Ok(((origin, fields), pre))) => {
                    let result = fields.and_then(|fields| {
                        load::note_columns(&fields, &self.opts_columns, &mut self.seen_columns);
                        pre.sample(fields, &mut self.rng)
                    });
                    match result {
                        Ok(sample) => {
                            let Some(state) = self.datasets.front_mut() else {
                                continue;
                            };
                            state.produced += 1;
                            if let Some(r) = &mut state.remaining {
                                *r -= 1;
                            }
                            return Some(Ok(DataRow { origin, sample }));
                        }
                        Err(error) => {
                            if let Err(e) = self.drops.record(origin, error, self.strict) {
                                return fail(self, e);
                            }
                        }
                    }
                }
                None => {
                    // The current dataset is done.
                    self.current = None;
                    let state = self.datasets.pop_front()?;
                    if state.produced == 0 {
                        return fail(
                            self,
                            DataError::Empty {
                                dataset: state.spec.raw,
                                dropped: self.drops.count,
                            },
                        );
                    }
                    if self.datasets.is_empty()
                        && let Err(e) = load::check_columns(&self.opts_columns, &self.seen_columns)
                    {
                        return fail(self, e);
                    }
                }
            }
        }
    }
}

/// Rows a window holds (ms-swift's `packing_interval`).
pub const WINDOW: usize = 128;

/// Training rows from a row stream: tokenized a window at a time, optionally packed.
pub struct TrainStream {
    rows: RowStream,
    template: Arc<Template>,
    opts: encode::EncodeOptions,
    packing: bool,
    strict: bool,
    pool: rayon::ThreadPool,
    ready: VecDeque<TrainRow>,
    /// Packing: the last, still-open bin of the previous window.
    carry: Vec<Encoded>,
    done: bool,
}

impl TrainStream {
    pub fn new(
        opts: &DataOptions,
        template: Arc<Template>,
        shard: Shard,
    ) -> Result<Self, DataError> {
        if opts.packing && opts.encode.max_length.is_none() {
            return Err(DataError::Args("--packing needs --max_length".into()));
        }
        Ok(TrainStream {
            rows: RowStream::new(opts, shard)?,
            template,
            opts: opts.encode,
            packing: opts.packing,
            strict: opts.strict,
            pool: encode::thread_pool(opts.num_proc)?,
            ready: VecDeque::new(),
            carry: Vec::new(),
            done: false,
        })
    }

    /// Rows dropped so far (bad rows and, with `delete`, rows over `--max_length`).
    pub fn drops(&self) -> &Drops {
        self.rows.drops()
    }

    fn fill(&mut self) -> Result<(), DataError> {
        let mut window = Vec::with_capacity(WINDOW);
        for row in self.rows.by_ref().take(WINDOW) {
            window.push(row?);
        }
        let finished = window.len() < WINDOW;
        let template = &self.template;
        let opts = self.opts;
        let results: Vec<Result<Encoded, RowError>> = self.pool.install(|| {
            window
                .par_iter()
                .map(|r| encode::encode_one(template, r, opts))
                .collect()
        });
        let mut encoded = Vec::with_capacity(window.len());
        for (row, result) in window.iter().zip(results) {
            match result {
                Ok(e) => encoded.push(e),
                Err(error) => self
                    .rows
                    .drops
                    .record(row.origin.clone(), error, self.strict)?,
            }
        }
        match (self.packing, self.opts.max_length) {
            (true, Some(max)) => {
                let mut items = std::mem::take(&mut self.carry);
                items.extend(encoded);
                let lengths: Vec<(usize, usize)> =
                    items.iter().map(Encoded::len).enumerate().collect();
                let mut bins = if lengths.is_empty() {
                    Vec::new()
                } else {
                    packing::to_constant_volume(&lengths, max)
                };
                let mut slots: Vec<Option<Encoded>> = items.into_iter().map(Some).collect();
                let mut take = |bin: &[(usize, usize)]| -> Vec<Encoded> {
                    bin.iter().filter_map(|(i, _)| slots[*i].take()).collect()
                };
                let carried = if finished { None } else { bins.pop() };
                for bin in &bins {
                    self.ready.push_back(TrainRow::pack(take(bin)));
                }
                if let Some(bin) = carried {
                    self.carry = take(&bin);
                }
            }
            _ => self.ready.extend(encoded.into_iter().map(TrainRow::from)),
        }
        self.done = finished;
        Ok(())
    }
}

impl Iterator for TrainStream {
    type Item = Result<TrainRow, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_counts_are_split_over_the_shards() {
        for world in 1..=5u64 {
            for n in [0usize, 1, 7, 10] {
                let shares: Vec<usize> = (0..world)
                    .map(|rank| Shard { rank, world }.share_of(n))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), n, "world {world}, #{n}");
                assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
            }
        }
        assert_eq!(Shard::ALL.share_of(9), 9);
    }
}
