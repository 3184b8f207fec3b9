//! Object storage for models, datasets and checkpoints: `s3://` (and S3-compatible
//! servers), `gs://`, `az://`, `file://` and plain paths, on the `object_store` crate.
//!
//! - [`location`]: parse what users pass into a typed [`Location`].
//! - [`client`]: clients built from the environment, with retries and timeouts.
//! - [`cache`]: download remote folders once into the local cache ([`materialize`]).
//! - [`download`]: one object, ranged, parallel, resumable, pinned by ETag.
//! - [`dataset`]: `.jsonl` streamed line by line, per-rank byte-range shards.
//! - [`localize`]: `--model`/`--dataset`/`--adapters` URIs replaced by cached copies.
//! - [`checkpoint`]: complete-or-invisible checkpoints (manifest written last).
//! - [`output`]: run folders, `save_total_limit`, `best`/`last` pointers, log sync.
//! - [`resume`]: `--resume_from_checkpoint` picks the newest complete checkpoint.
//! - [`weights_file`]: `.safetensors` files written with a created file's permissions.

pub mod cache;
pub mod checkpoint;
pub mod client;
pub mod dataset;
pub mod download;
pub mod error;
pub mod localize;
pub mod location;
pub mod lock;
pub mod output;
pub mod progress;
pub mod remote_bytes;
pub mod resume;
pub mod weights_file;

pub use cache::{Cache, materialize};
pub use client::{Remote, StoreConfig};
pub use error::{Result, StorageError};
pub use location::{Location, RemoteLocation, Scheme};
