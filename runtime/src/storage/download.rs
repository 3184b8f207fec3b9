//! Downloading one object to a local file: parallel ranged GETs, resumable after a crash,
//! and pinned to one version of the object by its ETag.
//!
//! While downloading, bytes go to `<dest>.kubeswift-partial` and the finished chunk
//! numbers to `<dest>.kubeswift-partial.json` (written by rename after each chunk). A
//! later call with the same size and ETag reuses the finished chunks; a changed object
//! starts over. The file appears under its real name only when every byte is there.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::storage::client::Remote;
use crate::storage::error::{Result, StorageError};
use crate::storage::progress::Progress;

/// How a file is split into ranged requests.
#[derive(Debug, Clone, Copy)]
pub struct DownloadOptions {
    /// Bytes per ranged GET (and per resumable unit).
    pub chunk_size: u64,
    /// Ranged GETs in flight at once, per file.
    pub concurrency: usize,
    /// Attempts per chunk when the body breaks off mid-stream (requests themselves are
    /// also retried by the client).
    pub chunk_attempts: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            chunk_size: 16 << 20,
            concurrency: 8,
            chunk_attempts: 3,
        }
    }
}

/// What one download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadReport {
    /// Bytes fetched from the store in this call.
    pub bytes_fetched: u64,
    /// Chunks that an earlier, interrupted call had already fetched.
    pub chunks_reused: usize,
}

/// The identity of the object version being downloaded, kept next to the partial file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialState {
    size: u64,
    e_tag: Option<String>,
    chunk_size: u64,
    done: BTreeSet<u64>,
}

/// `<dest>.kubeswift-partial`: where bytes land before the file is complete.
pub fn partial_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".kubeswift-partial")
}

fn state_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".kubeswift-partial.json")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The byte ranges of a file of `size` bytes in `chunk_size` pieces.
pub fn chunk_ranges(size: u64, chunk_size: u64) -> Vec<std::ops::Range<u64>> {
    let chunk_size = chunk_size.max(1);
    (0..size.div_ceil(chunk_size))
        .map(|i| i * chunk_size..((i + 1) * chunk_size).min(size))
        .collect()
}

/// Downloads the object `meta` describes (size and ETag, from a listing or HEAD) from
/// `remote` to `dest`, resuming an earlier partial download of the same version.
pub async fn download_object(
    remote: &Remote,
    meta: &ObjectMeta,
    dest: &Path,
    opts: &DownloadOptions,
    progress: &Progress,
) -> Result<DownloadReport> {
    let uri = remote.location.to_string();
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StorageError::io("create folder", parent, e))?;
    }
    let partial = partial_path(dest);
    let state_file = state_path(dest);
    let fresh = PartialState {
        size: meta.size,
        e_tag: meta.e_tag.clone(),
        chunk_size: opts.chunk_size.max(1),
        done: BTreeSet::new(),
    };
    let state = match read_state(&state_file).await {
        Some(old) if same_version(&old, &fresh) && file_len(&partial).await == Some(meta.size) => {
            old
        }
        _ => {
            let file =
                File::create(&partial).map_err(|e| StorageError::io("create", &partial, e))?;
            file.set_len(meta.size)
                .map_err(|e| StorageError::io("allocate", &partial, e))?;
            write_state(&state_file, &fresh).await?;
            fresh
        }
    };
    let chunk_size = state.chunk_size;
    let reused = state.done.len();
    let ranges = chunk_ranges(meta.size, chunk_size);
    for index in &state.done {
        if let Some(range) = ranges.get(*index as usize) {
            progress.skip(range.end - range.start);
        }
    }
    if reused > 0 {
        tracing::info!(%uri, chunks = reused, of = ranges.len(), "resuming a partial download");
    }
    let pending: Vec<(u64, std::ops::Range<u64>)> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u64, r.clone()))
        .filter(|(i, _)| !state.done.contains(i))
        .collect();

    let file = Arc::new(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(|e| StorageError::io("open", &partial, e))?,
    );
    let shared_state = Arc::new(tokio::sync::Mutex::new(state));
    let partial_ref = &partial;
    let fetched = futures::stream::iter(pending)
        .map(|(index, range)| {
            let file = file.clone();
            let shared_state = shared_state.clone();
            let state_file = state_file.clone();
            async move {
                let len = range.end - range.start;
                fetch_chunk(remote, meta, range, &file, partial_ref, opts, progress).await?;
                // Written under the lock so the file on disk only ever grows.
                let mut state = shared_state.lock().await;
                state.done.insert(index);
                write_state(&state_file, &state).await?;
                Ok::<u64, StorageError>(len)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_fold(0u64, |total, n| async move { Ok(total + n) })
        .await?;

    let file = Arc::try_unwrap(file).map_err(|_| StorageError::Task {
        op: "download",
        uri: uri.clone(),
        reason: "chunk writer still alive".into(),
    })?;
    let partial_owned = partial.clone();
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| StorageError::Task {
            op: "download",
            uri: uri.clone(),
            reason: e.to_string(),
        })?
        .map_err(|e| StorageError::io("sync", &partial_owned, e))?;
    let len = file_len(&partial).await.unwrap_or(0);
    if len != meta.size {
        return Err(StorageError::Corrupt {
            uri,
            reason: format!("local copy has {len} bytes, the object has {}", meta.size),
        });
    }
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(|e| StorageError::io("rename into place", dest, e))?;
    let _ = tokio::fs::remove_file(&state_file).await;
    Ok(DownloadReport {
        bytes_fetched: fetched,
        chunks_reused: reused,
    })
}

fn same_version(old: &PartialState, new: &PartialState) -> bool {
    old.size == new.size && old.e_tag == new.e_tag && new.e_tag.is_some() && old.chunk_size > 0
}

/// Fetches one byte range into the file, retrying when the body breaks off.
async fn fetch_chunk(
    remote: &Remote,
    meta: &ObjectMeta,
    range: std::ops::Range<u64>,
    file: &Arc<File>,
    partial: &Path,
    opts: &DownloadOptions,
    progress: &Progress,
) -> Result<()> {
    let uri = remote.location.to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_chunk_once(remote, meta, range.clone(), file, partial, progress).await {
            Ok(()) => return Ok(()),
            Err(err @ (StorageError::Changed { .. } | StorageError::Io { .. })) => return Err(err),
            Err(err) if attempt >= opts.chunk_attempts.max(1) => return Err(err),
            Err(err) => {
                tracing::warn!(%uri, attempt, error = %err, "chunk download failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * (1 << attempt.min(6)))).await;
            }
        }
    }
}

async fn fetch_chunk_once(
    remote: &Remote,
    meta: &ObjectMeta,
    range: std::ops::Range<u64>,
    file: &Arc<File>,
    partial: &Path,
    progress: &Progress,
) -> Result<()> {
    let uri = remote.location.to_string();
    if range.is_empty() {
        return Ok(());
    }
    let options = GetOptions {
        // Pin every range to the version we sized the file for.
        if_match: meta.e_tag.clone(),
        range: Some(GetRange::Bounded(range.clone())),
        ..Default::default()
    };
    let result = match remote.store.get_opts(&meta.location, options).await {
        Ok(result) => result,
        Err(object_store::Error::Precondition { .. }) => {
            let found = remote
                .store
                .head(&meta.location)
                .await
                .ok()
                .and_then(|m| m.e_tag)
                .unwrap_or_else(|| "unknown".into());
            return Err(StorageError::Changed {
                uri,
                expected: meta.e_tag.clone().unwrap_or_default(),
                found,
            });
        }
        Err(e) => return Err(StorageError::remote("download", &uri, e)),
    };
    if result.meta.e_tag.is_some() && meta.e_tag.is_some() && result.meta.e_tag != meta.e_tag {
        return Err(StorageError::Changed {
            uri,
            expected: meta.e_tag.clone().unwrap_or_default(),
            found: result.meta.e_tag.unwrap_or_default(),
        });
    }
    let mut stream = result.into_stream();
    let mut offset = range.start;
    // Batch small network frames into ~1 MiB positional writes on the blocking pool.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| StorageError::remote("download", &uri, e))?;
        batch_len += piece.len();
        batch.push(piece);
        if batch_len >= 1 << 20 {
            let n = write_batch(file, partial, offset, std::mem::take(&mut batch)).await?;
            offset += n;
            progress.inc(n);
            batch_len = 0;
        }
    }
    let n = write_batch(file, partial, offset, batch).await?;
    offset += n;
    progress.inc(n);
    if offset != range.end {
        return Err(StorageError::Corrupt {
            uri,
            reason: format!(
                "range {}..{} returned {} bytes",
                range.start,
                range.end,
                offset - range.start
            ),
        });
    }
    Ok(())
}

async fn write_batch(file: &Arc<File>, path: &Path, offset: u64, batch: Vec<Bytes>) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let file = file.clone();
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut at = offset;
        for piece in &batch {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        Ok::<u64, std::io::Error>(at - offset)
    })
    .await
    .map_err(|e| StorageError::Task {
        op: "write",
        uri: owned.display().to_string(),
        reason: e.to_string(),
    })?
    .map_err(|e| StorageError::io("write", path, e))
}

async fn read_state(path: &Path) -> Option<PartialState> {
    let text = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&text).ok()
}

async fn write_state(path: &Path, state: &PartialState) -> Result<()> {
    let text = serde_json::to_vec(state).map_err(|e| StorageError::io("encode", path, e.into()))?;
    write_atomic(path, &text).await
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so readers see the
/// old or the new content, never half of it.
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = with_suffix(path, &format!(".kubeswift-tmp-{}-{n}", std::process::id()));
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| StorageError::io("write", &tmp, e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| StorageError::io("rename", path, e))
}

async fn file_len(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path).await.ok().map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_file_exactly_once() {
        assert_eq!(chunk_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_ranges(8, 4), vec![0..4, 4..8]);
        assert!(chunk_ranges(0, 4).is_empty());
        assert_eq!(chunk_ranges(3, 0), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn a_partial_download_is_reused_only_for_the_same_version() {
        let base = PartialState {
            size: 10,
            e_tag: Some("\"a\"".into()),
            chunk_size: 4,
            done: [0].into(),
        };
        let same = PartialState {
            done: BTreeSet::new(),
            ..base.clone()
        };
        assert!(same_version(&base, &same));
        let changed = PartialState {
            e_tag: Some("\"b\"".into()),
            ..same.clone()
        };
        assert!(!same_version(&base, &changed));
        let no_etag = PartialState {
            e_tag: None,
            ..same.clone()
        };
        assert!(!same_version(
            &PartialState {
                e_tag: None,
                ..base.clone()
            },
            &no_etag
        ));
    }
}
