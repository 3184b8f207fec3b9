//! Checkpoints that are complete or invisible, on local disk and in object storage.
//!
//! Locally a checkpoint is written into `.checkpoint-STEP.tmp-PID/` and renamed to
//! `checkpoint-STEP/` when every file (and the manifest) is on disk. Remotely its files
//! are uploaded under the checkpoint prefix (multipart for large ones) and the manifest
//! — file list, sizes, SHA-256 — is written LAST; readers take a prefix as a checkpoint
//! only if its manifest parses and every listed file is there with the listed size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::client::Remote;
use crate::storage::download::write_atomic;
use crate::storage::error::{Result, StorageError};

/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST_NAME: &str = "kubeswift_manifest.json";
/// The manifest format written by this version.
pub const MANIFEST_FORMAT: &str = "kubeswift-checkpoint/1";

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the checkpoint folder, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// The list of a complete checkpoint's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// Every file of the checkpoint except the manifest itself, sorted by path.
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    /// Parses and checks a manifest read from `uri`.
    pub fn parse(bytes: &[u8], uri: &str) -> Result<Manifest> {
        let bad = |reason: String| StorageError::BadManifest {
            uri: uri.to_string(),
            reason,
        };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format '{}' is not '{MANIFEST_FORMAT}'",
                manifest.format
            )));
        }
        if manifest.files.is_empty() {
            return Err(bad("lists no files".into()));
        }
        for entry in &manifest.files {
            let path_ok = !entry.path.is_empty()
                && !entry.path.starts_with('/')
                && entry.path != MANIFEST_NAME
                && entry
                    .path
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != "..");
            if !path_ok {
                return Err(bad(format!("invalid file path '{}'", entry.path)));
            }
            let hex_ok =
                entry.sha256.len() == 64 && entry.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(bad(format!("'{}' has no valid sha256", entry.path)));
            }
        }
        Ok(manifest)
    }

    /// Checks that every listed file is present with its size in `sizes` (a listing of
    /// the checkpoint prefix, relative path -> bytes).
    pub fn check_files(&self, sizes: &BTreeMap<String, u64>, uri: &str) -> Result<()> {
        for entry in &self.files {
            match sizes.get(&entry.path) {
                Some(size) if *size == entry.size => {}
                Some(size) => {
                    return Err(StorageError::BadManifest {
                        uri: uri.to_string(),
                        reason: format!(
                            "'{}' has {size} bytes, the manifest says {}",
                            entry.path, entry.size
                        ),
                    });
                }
                None => {
                    return Err(StorageError::BadManifest {
                        uri: uri.to_string(),
                        reason: format!("'{}' is missing", entry.path),
                    });
                }
            }
        }
        Ok(())
    }

    fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The step of a `checkpoint-STEP` folder name.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?.parse().ok()
}

/// SHA-256 of a local file, hex.
pub async fn sha256_file(path: &Path) -> Result<String> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok::<_, std::io::Error>(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| StorageError::Task {
        op: "checksum",
        uri: path.display().to_string(),
        reason: e.to_string(),
    })?
    .map_err(|e| StorageError::io("checksum", path, e))
}

/// The files of a local checkpoint folder, relative and `/`-separated, sorted; the
/// manifest and our temporary files are left out.
pub fn list_local_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?;
            if meta.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == MANIFEST_NAME || rel.contains(".kubeswift-") {
                continue;
            }
            out.push(rel);
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Computes the manifest of a local checkpoint folder.
pub async fn build_manifest(dir: &Path) -> Result<Manifest> {
    let mut files = Vec::new();
    for rel in list_local_files(dir)? {
        let path = dir.join(&rel);
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        files.push(ManifestEntry {
            sha256: sha256_file(&path).await?,
            path: rel,
            size,
        });
    }
    Ok(Manifest {
        format: MANIFEST_FORMAT.to_string(),
        files,
    })
}

/// A local checkpoint being written. Write files into [`dir`](Self::dir), then
/// [`commit`](Self::commit); until then `checkpoint-STEP` does not exist (or still holds
/// the previous complete version), so a crash never leaves a half checkpoint behind.
/// Dropped without a commit (a save that failed, e.g. on a full disk), the temporary folder
/// is removed, so it does not keep the space the next save or a resume needs.
#[derive(Debug)]
pub struct LocalCheckpoint {
    tmp: PathBuf,
    target: PathBuf,
}

impl Drop for LocalCheckpoint {
    fn drop(&mut self) {
        // After a commit the folder has been renamed away and this finds nothing.
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Whether a folder name is one of [`LocalCheckpoint`]'s temporary folders
/// (`.checkpoint-STEP.tmp-PID`, or the `.old` one a re-save moves aside).
fn is_checkpoint_temporary(name: &str) -> bool {
    name.strip_prefix(".checkpoint-").is_some_and(|rest| {
        rest.split_once('.').is_some_and(|(step, kind)| {
            step.parse::<u64>().is_ok() && (kind.starts_with("tmp-") || kind == "old")
        })
    })
}

/// Removes the temporary folders a killed save left in `run_dir` (a process killed with
/// SIGKILL gets no chance to). Only for a run folder no process writes to any more: the
/// one a resumed checkpoint sits in. Returns how many were removed.
pub fn remove_stale_temporaries(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_checkpoint_temporary(&name) && entry.path().is_dir() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(folder = %entry.path().display(), error = %e, "could not remove a killed save's temporary folder")
                }
            }
        }
    }
    removed
}

impl LocalCheckpoint {
    /// Starts `run_dir/checkpoint-STEP`.
    pub async fn begin(run_dir: &Path, step: u64) -> Result<LocalCheckpoint> {
        let name = format!("checkpoint-{step}");
        let tmp = run_dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tokio::fs::metadata(&tmp).await.is_ok() {
            tokio::fs::remove_dir_all(&tmp)
                .await
                .map_err(|e| StorageError::io("remove stale", &tmp, e))?;
        }
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| StorageError::io("create", &tmp, e))?;
        Ok(LocalCheckpoint {
            tmp,
            target: run_dir.join(name),
        })
    }

    /// Where to write the checkpoint's files.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes the manifest, makes the folder durable and renames it into place.
    pub async fn commit(self) -> Result<PathBuf> {
        let manifest = build_manifest(&self.tmp).await?;
        let manifest_path = self.tmp.join(MANIFEST_NAME);
        write_atomic(&manifest_path, &manifest.to_json()).await?;
        sync_tree(&self.tmp).await?;
        if tokio::fs::metadata(&self.target).await.is_ok() {
            // Re-saving a step (after a resume): move the old one aside first, since a
            // rename cannot replace a non-empty folder.
            let old = self.tmp.with_extension("old");
            tokio::fs::rename(&self.target, &old)
                .await
                .map_err(|e| StorageError::io("move aside", &self.target, e))?;
            tokio::fs::rename(&self.tmp, &self.target)
                .await
                .map_err(|e| StorageError::io("rename into place", &self.target, e))?;
            let _ = tokio::fs::remove_dir_all(&old).await;
        } else {
            tokio::fs::rename(&self.tmp, &self.target)
                .await
                .map_err(|e| StorageError::io("rename into place", &self.target, e))?;
        }
        if let Some(parent) = self.target.parent() {
            sync_dir(parent).await?;
        }
        Ok(self.target.clone())
    }
}

async fn sync_tree(dir: &Path) -> Result<()> {
    let files = list_local_files(dir)?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        for rel in files.iter().map(String::as_str).chain([MANIFEST_NAME]) {
            let path = dir.join(rel);
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StorageError::io("sync", &path, e))?;
        }
        std::fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::io("sync", &dir, e))
    })
    .await
    .map_err(|e| StorageError::Task {
        op: "sync",
        uri: "checkpoint".into(),
        reason: e.to_string(),
    })?
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&owned).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| StorageError::Task {
            op: "sync",
            uri: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|e| StorageError::io("sync", dir, e))
}

/// How checkpoint files are uploaded.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Files at least this large go up as multipart uploads.
    pub multipart_threshold: u64,
    /// Bytes per multipart part (S3 needs at least 5 MiB for all but the last).
    pub part_size: usize,
    /// Parts in flight per file.
    pub part_concurrency: usize,
    /// Files uploaded at once.
    pub file_concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            multipart_threshold: 32 << 20,
            part_size: 16 << 20,
            part_concurrency: 8,
            file_concurrency: 4,
        }
    }
}

/// Uploads the local checkpoint folder `local` to the prefix `remote` and writes the
/// manifest last. Until this returns Ok, readers do not see the checkpoint: an existing
/// manifest at the prefix is deleted first, so re-uploading a step never exposes a mix.
pub async fn upload_checkpoint(
    local: &Path,
    remote: &Remote,
    opts: &UploadOptions,
) -> Result<Manifest> {
    let manifest_remote = remote.join(MANIFEST_NAME);
    let manifest_uri = manifest_remote.location.to_string();
    match remote
        .store
        .delete(&manifest_remote.location.object_path())
        .await
    {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(StorageError::remote("delete", &manifest_uri, e)),
    }
    let files = list_local_files(local)?;
    if files.is_empty() {
        return Err(StorageError::NotFound {
            uri: local.display().to_string(),
        });
    }
    let local_manifest = match tokio::fs::read(local.join(MANIFEST_NAME)).await {
        Ok(bytes) => Some(Manifest::parse(
            &bytes,
            &local.join(MANIFEST_NAME).display().to_string(),
        )?),
        Err(_) => None,
    };
    let entries: Vec<ManifestEntry> = futures::stream::iter(files)
        .map(|rel| {
            let path = local.join(&rel);
            let target = remote.join(&rel);
            async move {
                let (size, sha256) = upload_file(&path, &target, opts).await?;
                Ok::<_, StorageError>(ManifestEntry {
                    path: rel,
                    size,
                    sha256,
                })
            }
        })
        .buffered(opts.file_concurrency.max(1))
        .try_collect()
        .await?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        files: entries,
    };
    if let Some(expected) = local_manifest
        && expected.files != manifest.files
    {
        return Err(StorageError::BadManifest {
            uri: local.join(MANIFEST_NAME).display().to_string(),
            reason: "the files changed after the local checkpoint was committed".into(),
        });
    }
    remove_extra_objects(remote, &manifest).await?;
    remote
        .store
        .put(
            &manifest_remote.location.object_path(),
            PutPayload::from(manifest.to_json()),
        )
        .await
        .map_err(|e| StorageError::remote("upload", &manifest_uri, e))?;
    tracing::info!(uri = %remote.location, files = manifest.files.len(), "checkpoint uploaded");
    Ok(manifest)
}

/// Objects left under the prefix by an earlier upload of the same step that are not part
/// of this checkpoint.
async fn remove_extra_objects(remote: &Remote, manifest: &Manifest) -> Result<()> {
    let listing = list_sizes(remote).await?;
    let keep: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|e| e.path.as_str()).collect();
    for rel in listing.keys().filter(|rel| !keep.contains(rel.as_str())) {
        let target = remote.join(rel);
        remote
            .store
            .delete(&target.location.object_path())
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(StorageError::remote("delete", &target.location, e)),
            })?;
    }
    Ok(())
}

/// Uploads one file, returning its size and SHA-256 computed from the bytes sent.
async fn upload_file(path: &Path, target: &Remote, opts: &UploadOptions) -> Result<(u64, String)> {
    let uri = target.location.to_string();
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let object = target.location.object_path();
    if size < opts.multipart_threshold {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| StorageError::io("read", path, e))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        target
            .store
            .put(&object, PutPayload::from(bytes))
            .await
            .map_err(|e| StorageError::remote("upload", &uri, e))?;
        return Ok((size, sha));
    }
    let upload = target
        .store
        .put_multipart(&object)
        .await
        .map_err(|e| StorageError::remote("upload", &uri, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, opts.part_size.max(5 << 20));
    let mut reader = BlockReader::open(path, opts.part_size.max(1 << 20))?;
    let mut sent = 0u64;
    loop {
        let block = match reader.next().await {
            Ok(Some(block)) => block,
            Ok(None) => break,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        sent += block.len() as u64;
        if let Err(e) = writer.wait_for_capacity(opts.part_concurrency.max(1)).await {
            let _ = writer.abort().await;
            return Err(StorageError::remote("upload", &uri, e));
        }
        writer.put(block);
    }
    writer
        .finish()
        .await
        .map_err(|e| StorageError::remote("upload", &uri, e))?;
    if sent != size {
        return Err(StorageError::Corrupt {
            uri,
            reason: format!(
                "{} changed size while uploading ({size} -> {sent} bytes)",
                path.display()
            ),
        });
    }
    Ok((size, reader.finish()))
}

/// Reads a file in blocks on the blocking pool, hashing as it goes.
struct BlockReader {
    file: Option<std::fs::File>,
    hasher: Option<Sha256>,
    block: usize,
    path: PathBuf,
}

impl BlockReader {
    fn open(path: &Path, block: usize) -> Result<BlockReader> {
        let file = std::fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
        Ok(BlockReader {
            file: Some(file),
            hasher: Some(Sha256::new()),
            block,
            path: path.to_path_buf(),
        })
    }

    async fn next(&mut self) -> Result<Option<bytes::Bytes>> {
        let (Some(mut file), Some(mut hasher)) = (self.file.take(), self.hasher.take()) else {
            return Ok(None);
        };
        let block = self.block;
        let (file, hasher, buf) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = vec![0u8; block];
            let mut filled = 0;
            while filled < block {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            hasher.update(&buf);
            Ok::<_, std::io::Error>((file, hasher, buf))
        })
        .await
        .map_err(|e| StorageError::Task {
            op: "read",
            uri: self.path.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|e| StorageError::io("read", &self.path, e))?;
        self.hasher = Some(hasher);
        if buf.is_empty() {
            return Ok(None);
        }
        self.file = Some(file);
        Ok(Some(bytes::Bytes::from(buf)))
    }

    fn finish(self) -> String {
        hex::encode(self.hasher.unwrap_or_default().finalize())
    }
}

/// Sizes of the objects under a prefix, relative path -> bytes.
pub async fn list_sizes(remote: &Remote) -> Result<BTreeMap<String, u64>> {
    let loc = &remote.location;
    let prefix = loc.object_path();
    let objects: Vec<object_store::ObjectMeta> = remote
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| StorageError::remote("list", loc, e))?;
    Ok(objects
        .into_iter()
        .filter_map(|m| {
            let rel = loc.with_key(m.location.as_ref()).relative_to(loc)?;
            Some((rel, m.size))
        })
        .collect())
}

/// Reads and checks the manifest of the remote checkpoint at `remote`: Ok(Some) only for a
/// complete checkpoint, Ok(None) when the prefix has no manifest (incomplete or not a
/// checkpoint), Err for an unreadable store or a corrupt manifest.
pub async fn read_remote_manifest(remote: &Remote) -> Result<Option<Manifest>> {
    let target = remote.join(MANIFEST_NAME);
    let uri = target.location.to_string();
    let bytes = match remote.store.get(&target.location.object_path()).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(|e| StorageError::remote("read", &uri, e))?,
        Err(object_store::Error::NotFound { ref source, .. })
            if !source.to_string().contains("NoSuchBucket") =>
        {
            return Ok(None);
        }
        Err(e) => return Err(StorageError::remote("read", &uri, e)),
    };
    let manifest = Manifest::parse(&bytes, &uri)?;
    manifest.check_files(&list_sizes(remote).await?, &uri)?;
    Ok(Some(manifest))
}

/// Whether a remote prefix holds a complete checkpoint; a corrupt manifest counts as not.
pub async fn is_complete_remote(remote: &Remote) -> Result<bool> {
    match read_remote_manifest(remote).await {
        Ok(found) => Ok(found.is_some()),
        Err(StorageError::BadManifest { uri, reason }) => {
            tracing::warn!(%uri, %reason, "ignoring a checkpoint with an invalid manifest");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether a local folder is a complete checkpoint: written by our atomic rename (the
/// manifest is there and agrees with the files' sizes), or written by ms-swift itself
/// (no manifest, but `trainer_state.json` — the last file the HF Trainer saves).
pub fn is_complete_local(dir: &Path) -> bool {
    match std::fs::read(dir.join(MANIFEST_NAME)) {
        Ok(bytes) => {
            let uri = dir.join(MANIFEST_NAME).display().to_string();
            let Ok(manifest) = Manifest::parse(&bytes, &uri) else {
                return false;
            };
            manifest
                .files
                .iter()
                .all(|e| std::fs::metadata(dir.join(&e.path)).map(|m| m.len()).ok() == Some(e.size))
        }
        Err(_) => dir.join("trainer_state.json").is_file(),
    }
}

/// Checks a local checkpoint's files against its manifest's SHA-256s (a checkpoint
/// written by ms-swift has no manifest and passes). Sizes alone miss a file changed in
/// place after the save (a bad disk, a stray write); resuming from it would train on
/// corrupt weights or optimizer state. Reads every file once.
pub fn verify_local_contents(dir: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let Ok(bytes) = std::fs::read(dir.join(MANIFEST_NAME)) else {
        return Ok(());
    };
    let uri = dir.join(MANIFEST_NAME).display().to_string();
    let manifest = Manifest::parse(&bytes, &uri).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    for entry in &manifest.files {
        let path = dir.join(&entry.path);
        let mut file =
            std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = hex::encode(hasher.finalize());
        if digest != entry.sha256 {
            return Err(format!(
                "{}: sha256 {digest} differs from the manifest's {} (changed after the save)",
                path.display(),
                entry.sha256
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size,
            sha256: "0".repeat(64),
        }
    }

    #[test]
    fn manifest_round_trips_and_checks_listings() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            files: vec![
                entry("adapter_model.safetensors", 10),
                entry("sub/x.bin", 3),
            ],
        };
        let parsed = Manifest::parse(&manifest.to_json(), "m").unwrap();
        assert_eq!(parsed, manifest);
        let mut sizes = BTreeMap::from([
            ("adapter_model.safetensors".to_string(), 10),
            ("sub/x.bin".to_string(), 3),
        ]);
        parsed.check_files(&sizes, "m").unwrap();
        sizes.insert("sub/x.bin".into(), 2);
        let err = parsed
            .check_files(&sizes, "s3://b/c/m")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://b/c/m") && err.contains("sub/x.bin"),
            "{err}"
        );
        sizes.remove("sub/x.bin");
        assert!(
            parsed
                .check_files(&sizes, "m")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn manifest_rejects_garbage_naming_the_uri() {
        for (text, why) in [
            ("{", "not a manifest"),
            (r#"{"format":"other/1","files":[]}"#, "format"),
            (
                r#"{"format":"kubeswift-checkpoint/1","files":[]}"#,
                "no files",
            ),
            (
                r#"{"format":"kubeswift-checkpoint/1","files":[{"path":"../x","size":1,"sha256":"00"}]}"#,
                "invalid file path",
            ),
            (
                r#"{"format":"kubeswift-checkpoint/1","files":[{"path":"x","size":1,"sha256":"zz"}]}"#,
                "sha256",
            ),
        ] {
            let err = Manifest::parse(text.as_bytes(), "s3://b/ck/m.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("s3://b/ck/m.json") && err.contains(why),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn checkpoint_steps_parse_from_folder_names() {
        assert_eq!(checkpoint_step("checkpoint-500"), Some(500));
        assert_eq!(checkpoint_step("checkpoint-x"), None);
        assert_eq!(checkpoint_step(".checkpoint-5.tmp-1"), None);
    }

    #[tokio::test]
    async fn an_uncommitted_save_leaves_nothing_and_killed_saves_are_swept() {
        let run = tempfile::tempdir().unwrap();
        let ck = LocalCheckpoint::begin(run.path(), 3).await.unwrap();
        std::fs::write(ck.dir().join("optimizer.safetensors"), b"half").unwrap();
        let tmp = ck.dir().to_path_buf();
        drop(ck); // the save failed (a full disk): its folder goes with it
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 0);

        // What SIGKILL leaves: temporaries of other processes, beside real checkpoints and
        // the user's own dot folders, which stay.
        for dir in [
            ".checkpoint-4.tmp-1463",
            ".checkpoint-4.old",
            "checkpoint-2",
            ".checkpoint-notes",
            ".cache",
        ] {
            std::fs::create_dir_all(run.path().join(dir).join("inner")).unwrap();
        }
        assert_eq!(remove_stale_temporaries(run.path()), 2);
        let mut left: Vec<_> = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".cache", ".checkpoint-notes", "checkpoint-2"]);
    }

    #[tokio::test]
    async fn local_checkpoint_is_invisible_until_committed_and_replaces_atomically() {
        let run = tempfile::tempdir().unwrap();
        let ck = LocalCheckpoint::begin(run.path(), 5).await.unwrap();
        std::fs::write(ck.dir().join("adapter_model.safetensors"), b"weights-1").unwrap();
        std::fs::create_dir(ck.dir().join("sub")).unwrap();
        std::fs::write(ck.dir().join("sub/state.bin"), b"s").unwrap();
        let target = run.path().join("checkpoint-5");
        assert!(!target.exists());
        let path = ck.commit().await.unwrap();
        assert_eq!(path, target);
        assert!(is_complete_local(&target));
        let manifest =
            Manifest::parse(&std::fs::read(target.join(MANIFEST_NAME)).unwrap(), "m").unwrap();
        let names: Vec<_> = manifest.files.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["adapter_model.safetensors", "sub/state.bin"]);
        assert_eq!(
            manifest.files[0].sha256,
            hex::encode(Sha256::digest(b"weights-1"))
        );

        // Re-saving the same step replaces the folder as a whole.
        let again = LocalCheckpoint::begin(run.path(), 5).await.unwrap();
        std::fs::write(again.dir().join("adapter_model.safetensors"), b"weights-2").unwrap();
        again.commit().await.unwrap();
        assert_eq!(
            std::fs::read(target.join("adapter_model.safetensors")).unwrap(),
            b"weights-2"
        );
        assert!(!target.join("sub").exists());
        let leftovers: Vec<_> = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("checkpoint-5")]);

        // A byte changed in place keeps the size: complete by the listing, but its
        // contents no longer match the manifest.
        verify_local_contents(&target).unwrap();
        let weights = target.join("adapter_model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&weights, &bytes).unwrap();
        assert!(is_complete_local(&target));
        let e = verify_local_contents(&target).unwrap_err();
        assert!(
            e.contains("adapter_model.safetensors") && e.contains("sha256"),
            "{e}"
        );
        bytes[0] ^= 1;
        std::fs::write(&weights, &bytes).unwrap();

        // A truncated file makes it incomplete.
        std::fs::write(target.join("adapter_model.safetensors"), b"w").unwrap();
        assert!(!is_complete_local(&target));
    }
}
