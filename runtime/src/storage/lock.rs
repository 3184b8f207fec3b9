//! A lock file so that two processes on one node (pods sharing a cache volume, or the
//! workers of one pod) download a model once: the second waits, then finds it cached.
//!
//! `std::fs::File::lock` is `flock(2)`: released by the kernel when the holder exits or is
//! killed, so a crashed downloader never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::storage::error::{Result, StorageError};

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Waits (without blocking the async runtime) until the lock at `path` is ours.
    pub async fn acquire(path: &Path) -> Result<FileLock> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StorageError::io("create lock folder", parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io("open lock file", path, e))?;
        match file.try_lock() {
            Ok(()) => {
                return Ok(FileLock {
                    file,
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StorageError::io("lock", path, e));
            }
        }
        tracing::info!(lock = %path.display(), "another process is downloading the same files; waiting for it");
        let started = Instant::now();
        let owned = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| StorageError::Task {
                op: "waiting for lock",
                uri: owned.display().to_string(),
                reason: e.to_string(),
            })?
            .map_err(|e| StorageError::io("lock", path, e))?;
        tracing::info!(lock = %path.display(), waited_s = started.elapsed().as_secs_f64(), "lock acquired");
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it immediate even
        // if a duplicated descriptor lingers.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn second_holder_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.lock");
        let first = FileLock::acquire(&path).await.unwrap();
        let waiter = tokio::spawn({
            let path = path.clone();
            async move {
                let _second = FileLock::acquire(&path).await.unwrap();
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "second lock was granted while the first was held"
        );
        let released = Instant::now();
        drop(first);
        let acquired = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(acquired >= released);
    }
}
