//! `--streaming true` on the trainer's side: micro-batches read from this rank's shard of
//! the dataset stream (`data::stream`), restarted when the shard runs out, with a cursor a
//! checkpoint keeps so a resumed run trains on no row twice.
//!
//! - Sharding: rank r of w reads only its own part of every file (`Shard { rank: r,
//!   world: w }`: byte ranges of .jsonl/.txt files, row index modulo w for other formats),
//!   and each micro-batch is `per_device_train_batch_size` rows of that part. The global
//!   batch of a step is the union of the ranks' micro-batches. This is not the
//!   non-streaming order (a `--data_seed` shuffle of the whole dataset cut into global
//!   batches): rows come in file order, per shard, never shuffled, as ms-swift reads an
//!   `IterableDataset` in order (its `train_dataloader_shuffle` does not apply to one, and
//!   the randomness of streaming datasets is not guaranteed). Runs with different world
//!   sizes therefore see different batches.
//! - Epochs: a stream has no length, so `--max_steps` bounds the run. When a rank's shard
//!   runs out before that, the rank reads it again from the start, like HF's Trainer, which
//!   for a dataloader without a length sets `num_train_epochs = sys.maxsize` and iterates
//!   the `IterableDataset` anew each epoch (transformers `Trainer.set_initial_training_values`
//!   and `_inner_training_loop`). The epoch's last micro-batch may be short; with
//!   `--dataloader_drop_last` it is dropped. One difference: HF leaves a partial
//!   accumulation window at an epoch's end unstepped and folds its gradient into the next
//!   epoch's first window; here the window simply continues into the restarted stream, so
//!   every optimizer step sees `gradient_accumulation_steps` micro-batches. Ranks restart
//!   independently (their shards differ in length); no collective depends on it.
//! - Resume: the cursor is (epoch, rows of that epoch already trained) per rank. A resumed
//!   rank reopens its shard and skips that many rows by reading them again (rows are
//!   re-read and re-tokenized, so skipping costs about as much as reading them did). The
//!   cost buys exactness: the rows and every random draw of the preprocessing (one of
//!   several responses is picked at random) come out as in the uninterrupted run. HF
//!   resumes an `IterableDataset` by re-reading too (`skip_first_batches` over the
//!   batches already trained), but counts them from the global step alone, which goes
//!   wrong once a stream has been restarted; a per-rank cursor does not. Seeking
//!   to a byte offset would be cheaper but cannot reproduce `--packing` bins, which mix
//!   rows across a window.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{DataError, DataOptions, Shard, TrainRow, TrainStream};
use crate::template::Template;

/// Where one rank stands in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamCursor {
    /// Times the shard was started again after running out.
    pub epoch: u64,
    /// Rows of this epoch already handed to training.
    pub rows: u64,
}

/// Errors of the streamed input; they name the argument to change.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(
        "--dataset (--streaming true): rank {rank} of {world} found no usable rows in its shard ({dropped} dropped: see the warnings); give a dataset with at least one usable row per rank"
    )]
    EmptyShard {
        rank: u64,
        world: u64,
        dropped: usize,
    },
    #[error(
        "--dataloader_drop_last true: rank {rank} of {world} has {rows} rows in its shard of --dataset (--streaming true), fewer than one batch of --per_device_train_batch_size {batch_size}"
    )]
    ShortShard {
        rank: u64,
        world: u64,
        rows: u64,
        batch_size: usize,
    },
    #[error(
        "--resume_from_checkpoint: the checkpoint says rank {rank} had read {rows} rows of epoch {epoch}, but its shard of --dataset now ends after {found}; was the dataset changed?"
    )]
    CursorPastEnd {
        rank: u64,
        epoch: u64,
        rows: u64,
        found: u64,
    },
}

/// What to do when a shard runs out with `taken` rows of the batch in hand and
/// `epoch_rows` rows read in the whole epoch (`taken` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Restart the shard and hand out the short batch.
    ShortBatch,
    /// Restart the shard and fill the batch from the next epoch.
    Restart,
    /// The shard cannot give a single batch.
    Empty,
    /// With drop_last the shard can never give a whole batch.
    TooShort,
}

/// Pure: the rule at a shard's end (HF's dataloader yields a short last batch unless
/// `drop_last`; an epoch without a batch stops HF's training, and here is an error, since
/// the other ranks would wait for this one forever).
pub fn at_end(taken: usize, epoch_rows: u64, batch_size: usize, drop_last: bool) -> AtEnd {
    if epoch_rows == 0 {
        AtEnd::Empty
    } else if drop_last && epoch_rows < batch_size as u64 {
        AtEnd::TooShort
    } else if taken > 0 && !drop_last {
        AtEnd::ShortBatch
    } else {
        AtEnd::Restart
    }
}

/// Micro-batches of this rank's shard, for ever (the shard restarts when it runs out).
pub struct StreamedBatches {
    opts: DataOptions,
    template: Arc<Template>,
    shard: Shard,
    batch_size: usize,
    drop_last: bool,
    stream: TrainStream,
    cursor: StreamCursor,
}

impl StreamedBatches {
    /// Opens the shard (every dataset file is resolved now, so a missing one fails before
    /// training starts).
    pub fn open(
        opts: DataOptions,
        template: Arc<Template>,
        shard: Shard,
        batch_size: usize,
        drop_last: bool,
    ) -> Result<Self, StreamError> {
        let stream = TrainStream::new(&opts, template.clone(), shard)?;
        Ok(StreamedBatches {
            opts,
            template,
            shard,
            batch_size: batch_size.max(1),
            drop_last,
            stream,
            cursor: StreamCursor::default(),
        })
    }

    /// Where this rank stands: what a checkpoint saves.
    pub fn cursor(&self) -> StreamCursor {
        self.cursor
    }

    /// Moves to `cursor` (a resumed run): reopens the shard and reads past the rows the
    /// checkpointed run had already trained on.
    pub fn seek(&mut self, cursor: StreamCursor) -> Result<(), StreamError> {
        self.stream = TrainStream::new(&self.opts, self.template.clone(), self.shard)?;
        self.cursor = StreamCursor {
            epoch: cursor.epoch,
            rows: 0,
        };
        while self.cursor.rows < cursor.rows {
            match self.stream.next() {
                Some(row) => {
                    row?;
                    self.cursor.rows += 1;
                }
                None => {
                    return Err(StreamError::CursorPastEnd {
                        rank: self.shard.rank,
                        epoch: cursor.epoch,
                        rows: cursor.rows,
                        found: self.cursor.rows,
                    });
                }
            }
        }
        tracing::info!(
            rank = self.shard.rank,
            epoch = cursor.epoch,
            rows = cursor.rows,
            "stream: skipped the rows the checkpoint had trained on"
        );
        Ok(())
    }

    /// This rank's next micro-batch: `batch_size` rows, or fewer at the end of an epoch.
    pub fn next_batch(&mut self) -> Result<Vec<TrainRow>, StreamError> {
        let mut rows = Vec::with_capacity(self.batch_size);
        loop {
            while rows.len() < self.batch_size {
                match self.stream.next() {
                    Some(row) => {
                        rows.push(row?);
                        self.cursor.rows += 1;
                    }
                    None => break,
                }
            }
            if rows.len() == self.batch_size {
                return Ok(rows);
            }
            let epoch_rows = self.cursor.rows;
            let action = at_end(rows.len(), epoch_rows, self.batch_size, self.drop_last);
            let (rank, world) = (self.shard.rank, self.shard.world);
            match action {
                AtEnd::Empty => {
                    let dropped = self.stream.drops().count;
                    return Err(StreamError::EmptyShard {
                        rank,
                        world,
                        dropped,
                    });
                }
                AtEnd::TooShort => {
                    return Err(StreamError::ShortShard {
                        rank,
                        world,
                        rows: epoch_rows,
                        batch_size: self.batch_size,
                    });
                }
                AtEnd::ShortBatch | AtEnd::Restart => {}
            }
            self.restart(epoch_rows)?;
            if action == AtEnd::ShortBatch {
                return Ok(rows);
            }
            // drop_last: the epoch's short tail is not trained on.
            rows.clear();
        }
    }

    fn restart(&mut self, epoch_rows: u64) -> Result<(), StreamError> {
        // The log line the two-rank test reads: each rank's shard length.
        tracing::info!(
            rank = self.shard.rank,
            world = self.shard.world,
            epoch = self.cursor.epoch,
            rows = epoch_rows,
            "stream: this rank's shard ran out; reading it again"
        );
        self.stream = TrainStream::new(&self.opts, self.template.clone(), self.shard)?;
        self.cursor = StreamCursor {
            epoch: self.cursor.epoch + 1,
            rows: 0,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_end_gives_a_short_batch_unless_drop_last() {
        assert_eq!(at_end(1, 5, 2, false), AtEnd::ShortBatch);
        assert_eq!(at_end(0, 4, 2, false), AtEnd::Restart);
        assert_eq!(at_end(1, 5, 2, true), AtEnd::Restart);
        assert_eq!(at_end(0, 0, 2, false), AtEnd::Empty);
        assert_eq!(at_end(0, 0, 2, true), AtEnd::Empty);
        assert_eq!(at_end(1, 1, 2, true), AtEnd::TooShort);
        assert_eq!(at_end(1, 1, 2, false), AtEnd::ShortBatch);
    }
}
