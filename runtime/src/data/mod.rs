//! Datasets for training and inference, as ms-swift reads them (issue 4, item 1).
//!
//! The read side, in order:
//! - `spec`: `path[:subset][#N]`.
//! - `source`: where bytes come from (`ByteSource`: a local file here, object storage
//!   later) and `LineReader`, which reads whole lines of a byte range (sharding, resume).
//! - `read`: `.jsonl`, `.json`, `.csv`, `.txt` files to raw rows with file and line.
//! - `columns`, `preprocess`: `--columns`, then ms-swift's formats to conversations.
//! - `registry`: datasets shipped in the binary (`swift/self-cognition`).
//! - `sampling`, `load`: `#N`, `--split_dataset_ratio`, `--val_dataset`,
//!   `val_dataset.jsonl`.
//! - `encode`, `packing`, `dataset`, `stream`: templates, `--max_length` and
//!   `--truncation_strategy`, `--packing`, `--lazy_tokenize`, `--streaming`,
//!   `--dataset_num_proc`, `--strict`.
//! - `collate`: padded batches (`--padding_side`), masks, position ids; labels unshifted.

pub mod collate;
pub mod columns;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod load;
pub mod options;
pub mod packing;
pub mod preprocess;
pub mod read;
pub mod registry;
pub mod sampling;
pub mod source;
pub mod spec;
pub mod stream;

pub use collate::{Batch, Collator, PaddingSide};
pub use dataset::{LazyDataset, Prepared, TrainData, prepare};
pub use encode::{Drops, EncodeOptions, Truncation};
pub use error::{DataError, Position, RowError, RowOrigin};
pub use load::{Loaded, load, write_val_dataset};
pub use options::DataOptions;
pub use packing::TrainRow;
pub use preprocess::{Preprocess, Sample, SelfCognition};
pub use source::{ByteSource, LineReader, LocalFile};
pub use spec::DatasetSpec;
pub use stream::{RowStream, Shard, TrainStream};

/// A preprocessed row and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DataRow {
    pub origin: RowOrigin,
    pub sample: Sample,
}
