//! A bucket object as the data pipeline's `ByteSource`, so `--streaming true` reads a
//! remote `.jsonl` with ranged GETs (each data-parallel rank only its byte range, see
//! `data::stream`) instead of downloading it first. Blocks are fetched on a background
//! thread a few ahead of the reader; memory stays at those blocks however large the file.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, sync_channel};

use bytes::Bytes;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::data::ByteSource;
use crate::storage::client::Remote;
use crate::storage::dataset::{StreamOptions, fetch_block};
use crate::storage::error::{Result, StorageError};
use crate::storage::location::{Location, RemoteLocation};

/// One object in a bucket, read from any offset.
#[derive(Debug, Clone)]
pub struct RemoteBytes {
    location: RemoteLocation,
    name: String,
    /// Size and ETag at open: every block read is conditional on the ETag, so an object
    /// replaced mid-run is an error, not a mix of two versions.
    meta: ObjectMeta,
    opts: StreamOptions,
}

/// Runs `work` on a runtime of its own on a thread of its own: the client is built there
/// (a client's connections belong to the runtime that made them), and callers may or may
/// not be inside a runtime themselves.
fn on_own_runtime<T: Send + 'static>(
    uri: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let task = |reason: String| StorageError::Task {
        op: "read",
        uri: uri.to_string(),
        reason,
    };
    std::thread::spawn(work)
        .join()
        .map_err(|_| task("the reader thread panicked".into()))?
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl RemoteBytes {
    /// Looks the object up (a missing object or bucket fails here, naming the URI).
    pub fn open(uri: &str) -> Result<RemoteBytes> {
        let location = match Location::parse(uri)? {
            Location::Remote(loc) => loc,
            Location::Local(path) => {
                return Err(StorageError::BadSetting {
                    name: "uri".into(),
                    value: path.display().to_string(),
                    reason: "not a bucket URI".into(),
                });
            }
        };
        let name = location.to_string();
        let loc = location.clone();
        let meta = on_own_runtime(uri, move || {
            let uri = loc.to_string();
            let rt = runtime().map_err(|e| StorageError::Task {
                op: "read",
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
            rt.block_on(async {
                let remote = Remote::open(&loc)?;
                remote
                    .store
                    .head(&loc.object_path())
                    .await
                    .map_err(|e| StorageError::remote("read", &uri, e))
            })
        })?;
        Ok(RemoteBytes {
            location,
            name,
            meta,
            opts: StreamOptions::default(),
        })
    }
}

impl ByteSource for RemoteBytes {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.meta.size)
    }

    fn open_at(&self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let (tx, rx) = sync_channel::<Result<Bytes>>(self.opts.read_ahead.max(1));
        let (location, meta, opts) = (self.location.clone(), self.meta.clone(), self.opts);
        let rt = runtime()?;
        std::thread::spawn(move || {
            rt.block_on(async move {
                let remote = match Remote::open(&location) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut start = offset;
                while start < meta.size {
                    let end = (start + opts.block_size.max(1)).min(meta.size);
                    let block =
                        fetch_block(&remote, &meta, start..end, opts.block_attempts.max(1)).await;
                    let failed = block.is_err();
                    // A dropped reader (its range is done) ends the fetching.
                    if tx.send(block).is_err() || failed {
                        return;
                    }
                    start = end;
                }
            });
        });
        Ok(Box::new(BlockReader {
            rx,
            current: Bytes::new(),
        }))
    }
}

/// The reading end: hands out the fetched blocks in order.
struct BlockReader {
    rx: Receiver<Result<Bytes>>,
    current: Bytes,
}

impl Read for BlockReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(block)) => self.current = block,
                Ok(Err(e)) => return Err(io::Error::other(e.to_string())),
                // The fetcher finished: end of the object.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
