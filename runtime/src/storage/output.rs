//! A training run's output folder, local or remote:
//! `output_dir/vN-YYYYMMDD-HHMMSS/{args.json, logging.jsonl, runs/, checkpoint-STEP/}`.
//!
//! Training always writes to a local run folder (a staging copy when `--output_dir` is a
//! URI); this module mirrors it to the bucket: checkpoints through
//! [`upload_checkpoint`], the run's log files periodically, `save_total_limit` rotation on
//! both sides, and `best`/`last` pointers (symlinks locally, small objects remotely).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::checkpoint::{
    MANIFEST_NAME, UploadOptions, checkpoint_step, upload_checkpoint,
};
use crate::storage::client::Remote;
use crate::storage::error::{Result, StorageError};
use crate::storage::location::Location;

/// ms-swift's run folder name: `v{N}-{YYYYMMDD-HHMMSS}` with N one more than the largest
/// `vN` already present (as `add_version_to_work_dir` does).
pub fn next_run_name(existing: &[String], timestamp: &str) -> String {
    let next = existing
        .iter()
        .filter_map(|name| run_version(name))
        .max()
        .map_or(0, |v| v + 1);
    format!("v{next}-{timestamp}")
}

/// N of a `vN...` run folder name.
pub fn run_version(name: &str) -> Option<u64> {
    let digits: String = name
        .strip_prefix('v')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The checkpoints `save_total_limit` removes, by name, following the Hugging Face
/// Trainer: keep the newest `limit`, never the best one (which is moved just before the
/// newest), and keep two when the limit is 1 and the best is not the newest.
pub fn checkpoints_to_delete(names: &[String], limit: usize, best: Option<&str>) -> Vec<String> {
    let mut sorted: Vec<&String> = names
        .iter()
        .filter(|n| checkpoint_step(n).is_some())
        .collect();
    sorted.sort_by_key(|n| checkpoint_step(n));
    if let Some(best) = best
        && let Some(i) = sorted.iter().position(|n| n.as_str() == best)
    {
        // HF bubbles the best checkpoint up to the second-newest slot.
        let target = sorted.len().saturating_sub(2).max(i);
        let item = sorted.remove(i);
        sorted.insert(target, item);
    }
    let mut limit = limit;
    if limit == 1
        && let (Some(best), Some(last)) = (best, sorted.last())
        && last.as_str() != best
    {
        limit = 2;
    }
    let delete = sorted.len().saturating_sub(limit);
    sorted[..delete].iter().map(|n| n.to_string()).collect()
}

/// The content of a remote `best`/`last` pointer object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Always "kubeswift-pointer/1".
    pub format: String,
    /// The checkpoint folder's name, relative to the run folder.
    pub target: String,
}

const POINTER_FORMAT: &str = "kubeswift-pointer/1";

impl Pointer {
    /// Parses a pointer object; None when the bytes are something else.
    pub fn parse(bytes: &[u8]) -> Option<Pointer> {
        let pointer: Pointer = serde_json::from_slice(bytes).ok()?;
        (pointer.format == POINTER_FORMAT && checkpoint_step(&pointer.target).is_some())
            .then_some(pointer)
    }
}

/// One training run's output: the local folder it writes to and, for a URI output
/// directory, the remote folder it is mirrored to.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The folder training writes into.
    pub local: PathBuf,
    /// The bucket folder it is mirrored to.
    pub remote: Option<Remote>,
    /// Transfer settings for checkpoints.
    pub upload: UploadOptions,
}

impl RunOutput {
    /// Opens the next run folder (`vN-timestamp`) of `output_dir`. For a URI, versions
    /// already in the bucket count too, and the local staging copy lives under
    /// `staging_root/<scheme>/<bucket>/<key>`.
    pub async fn create(
        output_dir: &str,
        staging_root: &Path,
        timestamp: &str,
    ) -> Result<RunOutput> {
        match Location::parse(output_dir)? {
            Location::Local(root) => {
                let existing = local_names(&root);
                let name = next_run_name(&existing, timestamp);
                let local = root.join(name);
                create_dir(&local).await?;
                Ok(RunOutput {
                    local,
                    remote: None,
                    upload: UploadOptions::default(),
                })
            }
            Location::Remote(loc) => {
                let remote_root = Remote::open(&loc)?;
                RunOutput::create_remote(remote_root, staging_root, timestamp).await
            }
        }
    }

    /// [`create`](Self::create) for an already opened remote output folder.
    pub async fn create_remote(
        remote_root: Remote,
        staging_root: &Path,
        timestamp: &str,
    ) -> Result<RunOutput> {
        let loc = &remote_root.location;
        let local_root = staging_root
            .join(loc.scheme.as_str())
            .join(&loc.bucket)
            .join(&loc.key);
        let mut existing = child_prefixes(&remote_root).await?;
        existing.extend(local_names(&local_root));
        let name = next_run_name(&existing, timestamp);
        let local = local_root.join(&name);
        create_dir(&local).await?;
        Ok(RunOutput {
            local,
            remote: Some(remote_root.join(&name)),
            upload: UploadOptions::default(),
        })
    }

    /// Where a checkpoint of this run ends up: its URI when the run is mirrored to a
    /// bucket (what the operator and the user should be told), else the local folder.
    pub fn checkpoint_uri(&self, name: &str) -> String {
        match &self.remote {
            Some(remote) => remote.location.join(name).to_string(),
            None => self.local.join(name).display().to_string(),
        }
    }

    /// Publishes a committed local checkpoint: uploads it (manifest last), rotates old
    /// checkpoints on both sides, and — only with `--create_checkpoint_symlink`
    /// (`pointers`) — points `last` (and `best`, when known) at it.
    pub async fn publish_checkpoint(
        &self,
        checkpoint_dir: &Path,
        save_total_limit: Option<usize>,
        best: Option<&str>,
        pointers: bool,
    ) -> Result<()> {
        let name = checkpoint_dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| checkpoint_step(n).is_some())
            .ok_or_else(|| StorageError::InvalidUri {
                uri: checkpoint_dir.display().to_string(),
                reason: "not a checkpoint-STEP folder".into(),
            })?
            .to_string();
        if let Some(remote) = &self.remote {
            upload_checkpoint(checkpoint_dir, &remote.join(&name), &self.upload).await?;
        }
        if let Some(limit) = save_total_limit {
            self.rotate(limit, best).await?;
        }
        self.sync_run_files().await;
        if pointers {
            self.set_pointer("last", &name).await?;
            if let Some(best) = best {
                self.set_pointer("best", best).await?;
            }
        }
        Ok(())
    }

    /// Mirrors the run's log files (args.json, logging.jsonl, TensorBoard events, ...) to
    /// the bucket; called with every checkpoint and at the end of training. A failure is
    /// logged, not returned: losing a log upload must not stop training.
    pub async fn sync_run_files(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        let mut sync = RunFileSync::new(self.local.clone(), remote.clone());
        if let Err(e) = sync.sync_once().await {
            tracing::warn!(error = %e, "syncing the run's log files failed");
        }
    }

    /// Deletes the checkpoints `save_total_limit` no longer keeps, locally and remotely.
    /// Remotely the manifest goes first, so a half-deleted checkpoint is already invisible.
    pub async fn rotate(&self, limit: usize, best: Option<&str>) -> Result<Vec<String>> {
        let mut names = local_names(&self.local);
        if let Some(remote) = &self.remote {
            names.extend(child_prefixes(remote).await?);
        }
        names.sort();
        names.dedup();
        let doomed = checkpoints_to_delete(&names, limit, best);
        for name in &doomed {
            let local = self.local.join(name);
            if local.exists() {
                tokio::fs::remove_dir_all(&local)
                    .await
                    .map_err(|e| StorageError::io("delete old checkpoint", &local, e))?;
            }
            if let Some(remote) = &self.remote {
                delete_prefix(&remote.join(name)).await?;
            }
            tracing::info!(checkpoint = %name, "deleted by save_total_limit");
        }
        Ok(doomed)
    }

    /// Points `best` or `last` at a checkpoint: a relative symlink locally (as ms-swift's
    /// `create_checkpoint_symlink`), a small pointer object remotely.
    pub async fn set_pointer(&self, which: &str, checkpoint: &str) -> Result<()> {
        let link = self.local.join(which);
        let tmp = self.local.join(format!(".{which}.kubeswift-tmp"));
        let _ = tokio::fs::remove_file(&tmp).await;
        tokio::fs::symlink(checkpoint, &tmp)
            .await
            .map_err(|e| StorageError::io("symlink", &tmp, e))?;
        tokio::fs::rename(&tmp, &link)
            .await
            .map_err(|e| StorageError::io("symlink", &link, e))?;
        if let Some(remote) = &self.remote {
            let pointer = Pointer {
                format: POINTER_FORMAT.into(),
                target: checkpoint.into(),
            };
            let target = remote.join(which);
            let body = serde_json::to_vec(&pointer).unwrap_or_default();
            target
                .store
                .put(&target.location.object_path(), PutPayload::from(body))
                .await
                .map_err(|e| StorageError::remote("write pointer", &target.location, e))?;
        }
        Ok(())
    }
}

/// Reads a remote `best`/`last` pointer; None when absent or not a pointer.
pub async fn read_pointer(run: &Remote, which: &str) -> Result<Option<String>> {
    let target = run.join(which);
    match target.store.get(&target.location.object_path()).await {
        Ok(result) => {
            let bytes = result
                .bytes()
                .await
                .map_err(|e| StorageError::remote("read", &target.location, e))?;
            Ok(Pointer::parse(&bytes).map(|p| p.target))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StorageError::remote("read", &target.location, e)),
    }
}

/// Deletes everything under a prefix, the checkpoint manifest first.
pub async fn delete_prefix(remote: &Remote) -> Result<()> {
    let manifest = remote.join(MANIFEST_NAME);
    match remote.store.delete(&manifest.location.object_path()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(StorageError::remote("delete", &manifest.location, e)),
    }
    let prefix = remote.location.object_path();
    let locations =
        futures::StreamExt::boxed(remote.store.list(Some(&prefix)).map_ok(|m| m.location));
    remote
        .store
        .delete_stream(locations)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| StorageError::remote("delete", &remote.location, e))?;
    Ok(())
}

/// Names of the "folders" directly under a remote prefix.
pub async fn child_prefixes(remote: &Remote) -> Result<Vec<String>> {
    let loc = &remote.location;
    let prefix = loc.object_path();
    let prefix = (!loc.key.is_empty()).then_some(&prefix);
    let listing = remote
        .store
        .list_with_delimiter(prefix)
        .await
        .map_err(|e| StorageError::remote("list", loc, e))?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| loc.with_key(p.as_ref()).relative_to(loc))
        .collect())
}

fn local_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn create_dir(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| StorageError::io("create", dir, e))
}

/// Mirrors a run folder's log files (`args.json`, `logging.jsonl`, TensorBoard event files
/// under `runs/`, plots, ...) to the bucket: everything except checkpoint folders, our
/// temporary files and the `best`/`last` pointers, uploading only what changed.
#[derive(Debug)]
pub struct RunFileSync {
    local: PathBuf,
    remote: Remote,
    seen: BTreeMap<String, (u64, SystemTime)>,
}

impl RunFileSync {
    /// A syncer for one run folder.
    pub fn new(local: PathBuf, remote: Remote) -> RunFileSync {
        RunFileSync {
            local,
            remote,
            seen: BTreeMap::new(),
        }
    }

    /// Uploads the files that changed since the last call; returns how many.
    pub async fn sync_once(&mut self) -> Result<usize> {
        let mut uploaded = 0;
        for rel in run_log_files(&self.local)? {
            let path = self.local.join(&rel);
            let Ok(meta) = tokio::fs::metadata(&path).await else {
                continue;
            };
            let stamp = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            if self.seen.get(&rel) == Some(&stamp) {
                continue;
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| StorageError::io("read", &path, e))?;
            let target = self.remote.join(&rel);
            target
                .store
                .put(&target.location.object_path(), PutPayload::from(bytes))
                .await
                .map_err(|e| StorageError::remote("upload", &target.location, e))?;
            self.seen.insert(rel, stamp);
            uploaded += 1;
        }
        Ok(uploaded)
    }

    /// Runs [`sync_once`](Self::sync_once) every `interval` in the background until the
    /// handle is stopped (which syncs one last time). Errors are logged and retried at
    /// the next tick: losing a log line upload must not stop training.
    pub fn spawn(mut self, interval: Duration) -> RunFileSyncHandle {
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {
                        if let Err(e) = self.sync_once().await {
                            tracing::warn!(error = %e, "syncing run files failed; will retry");
                        }
                    }
                    _ = &mut stop_rx => break,
                }
            }
            self.sync_once().await
        });
        RunFileSyncHandle { stop_tx, task }
    }
}

/// A running [`RunFileSync`].
#[derive(Debug)]
pub struct RunFileSyncHandle {
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<usize>>,
}

impl RunFileSyncHandle {
    /// Stops the loop after a final sync and reports that sync's result.
    pub async fn stop(self) -> Result<usize> {
        let _ = self.stop_tx.send(());
        self.task.await.map_err(|e| StorageError::Task {
            op: "run file sync",
            uri: "run folder".into(),
            reason: e.to_string(),
        })?
    }
}

/// The run folder's files that are synced periodically (relative, `/`-separated).
pub fn run_log_files(run_dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let file_type = entry
                .file_type()
                .map_err(|e| StorageError::io("stat", entry.path(), e))?;
            let skip = name.starts_with('.')
                || name.contains(".kubeswift-")
                || file_type.is_symlink()
                || (dir == root && checkpoint_step(&name).is_some());
            if skip {
                continue;
            }
            if file_type.is_dir() {
                walk(root, &entry.path(), out)?;
            } else if let Ok(rel) = entry.path().strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(run_dir, run_dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_names_follow_ms_swift_versioning() {
        assert_eq!(next_run_name(&[], "20250101-000000"), "v0-20250101-000000");
        let existing = names(&[
            "v0-20250101-000000",
            "v3-20250102-000000",
            "runs",
            "vx",
            "v10abc",
        ]);
        assert_eq!(next_run_name(&existing, "T"), "v11-T");
        assert_eq!(run_version("v12-2025"), Some(12));
        assert_eq!(run_version("version"), None);
    }

    #[test]
    fn save_total_limit_keeps_newest_and_best_like_hf() {
        let all = names(&[
            "checkpoint-100",
            "checkpoint-20",
            "checkpoint-300",
            "checkpoint-40",
            "runs",
        ]);
        assert_eq!(
            checkpoints_to_delete(&all, 2, None),
            names(&["checkpoint-20", "checkpoint-40"])
        );
        // The best checkpoint survives: it moves to just before the newest.
        assert_eq!(
            checkpoints_to_delete(&all, 2, Some("checkpoint-20")),
            names(&["checkpoint-40", "checkpoint-100"])
        );
        // Limit 1 with a best that is not the newest keeps two.
        assert_eq!(
            checkpoints_to_delete(&all, 1, Some("checkpoint-40")),
            names(&["checkpoint-20", "checkpoint-100"])
        );
        assert_eq!(
            checkpoints_to_delete(&all, 1, Some("checkpoint-300")).len(),
            3
        );
        assert!(checkpoints_to_delete(&all, 10, None).is_empty());
    }

    #[test]
    fn pointers_parse_only_our_format() {
        let ok = br#"{"format":"kubeswift-pointer/1","target":"checkpoint-5"}"#;
        assert_eq!(Pointer::parse(ok).unwrap().target, "checkpoint-5");
        assert!(Pointer::parse(br#"{"format":"kubeswift-pointer/1","target":"../x"}"#).is_none());
        assert!(Pointer::parse(b"binary\x00").is_none());
    }

    #[test]
    fn run_log_files_skip_checkpoints_pointers_and_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("args.json"), "{}").unwrap();
        std::fs::write(d.join("logging.jsonl"), "").unwrap();
        std::fs::create_dir_all(d.join("runs")).unwrap();
        std::fs::write(d.join("runs/events.out.tfevents.1"), "e").unwrap();
        std::fs::create_dir_all(d.join("checkpoint-5")).unwrap();
        std::fs::write(d.join("checkpoint-5/adapter_model.safetensors"), "w").unwrap();
        std::fs::create_dir_all(d.join(".checkpoint-6.tmp-1")).unwrap();
        std::fs::write(d.join(".checkpoint-6.tmp-1/x"), "w").unwrap();
        std::os::unix::fs::symlink("checkpoint-5", d.join("last")).unwrap();
        assert_eq!(
            run_log_files(d).unwrap(),
            names(&["args.json", "logging.jsonl", "runs/events.out.tfevents.1"])
        );
    }
}
