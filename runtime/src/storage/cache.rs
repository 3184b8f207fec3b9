//! The local cache of remote folders (models, adapters, checkpoints) and files (datasets
//! in formats we do not stream). `materialize("s3://b/models/qwen")` returns a local
//! folder with the same files, downloading only what is missing or changed; local paths
//! come back untouched.
//!
//! Layout under the cache root (`$MODELSCOPE_CACHE`, else `~/.cache/modelscope`):
//! `kubeswift/<scheme>/<bucket>/<key>/...` holds the files, `kubeswift/.records/...json`
//! the size and ETag each file was downloaded at, `kubeswift/.locks/...lock` the lock that
//! makes concurrent processes download once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::storage::checkpoint::{MANIFEST_NAME, Manifest, sha256_file};
use crate::storage::client::Remote;
use crate::storage::download::{DownloadOptions, download_object, write_atomic};
use crate::storage::error::{Result, StorageError};
use crate::storage::location::{Location, RemoteLocation};
use crate::storage::lock::FileLock;
use crate::storage::progress::Progress;

/// Environment variable naming the cache root, as in ms-swift.
pub const ENV_CACHE: &str = "MODELSCOPE_CACHE";

/// Size and ETag of a remote file, as listed and as recorded when it was downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Bytes.
    pub size: u64,
    /// The store's ETag (None when the store gives none; such files are re-checked by size).
    pub e_tag: Option<String>,
}

/// What the cache did for one `materialize`.
#[derive(Debug, Clone, Default)]
pub struct MaterializeReport {
    /// The local folder (or file, for a single object).
    pub path: PathBuf,
    /// Files fetched in this call.
    pub files_downloaded: usize,
    /// Files that were already cached at the right version.
    pub files_cached: usize,
    /// Bytes fetched from the store in this call.
    pub bytes_fetched: u64,
    /// Chunks reused from interrupted earlier downloads.
    pub chunks_reused: usize,
}

/// Which remote files need fetching, given the remote listing, the record of what was
/// downloaded, and the sizes of the local files. Pure, so the rules are unit-tested.
pub fn plan_downloads(
    remote: &BTreeMap<String, FileVersion>,
    recorded: &BTreeMap<String, FileVersion>,
    local_sizes: &BTreeMap<String, u64>,
) -> Vec<String> {
    remote
        .iter()
        .filter(|(rel, version)| {
            let recorded_ok = recorded.get(*rel) == Some(version);
            let local_ok = local_sizes.get(*rel) == Some(&version.size);
            !(recorded_ok && local_ok)
        })
        .map(|(rel, _)| rel.clone())
        .collect()
}

/// The local cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    options: DownloadOptions,
}

impl Cache {
    /// The cache at `$MODELSCOPE_CACHE` (or `~/.cache/modelscope`), under `kubeswift/`.
    pub fn from_env() -> Cache {
        let base = std::env::var_os(ENV_CACHE)
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/modelscope"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("modelscope"));
        Cache::new(base.join("kubeswift"))
    }

    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache {
            root: root.into(),
            options: DownloadOptions::default(),
        }
    }

    /// The same cache with other transfer settings.
    pub fn with_options(mut self, options: DownloadOptions) -> Cache {
        self.options = options;
        self
    }

    /// The cache's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the copy of `loc` lives.
    pub fn local_path(&self, loc: &RemoteLocation) -> PathBuf {
        self.root.join(relative_for(loc))
    }

    fn record_path(&self, loc: &RemoteLocation) -> PathBuf {
        self.root
            .join(".records")
            .join(format!("{}.json", relative_for(loc).display()))
    }

    fn lock_path(&self, loc: &RemoteLocation) -> PathBuf {
        self.root
            .join(".locks")
            .join(format!("{}.lock", relative_for(loc).display()))
    }

    /// A local folder or file holding what `uri` names; local paths pass through untouched.
    pub async fn materialize(&self, uri: &str) -> Result<PathBuf> {
        match Location::parse(uri)? {
            Location::Local(path) => Ok(path),
            Location::Remote(loc) => {
                let remote = Remote::open(&loc)?;
                Ok(self.materialize_remote(&remote).await?.path)
            }
        }
    }

    /// Downloads what is missing or changed of the object or prefix `remote` points at.
    pub async fn materialize_remote(&self, remote: &Remote) -> Result<MaterializeReport> {
        let loc = &remote.location;
        let (listing, single_file) = list_target(remote).await?;
        let local_root = self.local_path(loc);
        let _lock = FileLock::acquire(&self.lock_path(loc)).await?;

        // Read the record only under the lock: another process may just have filled it.
        let record_path = self.record_path(loc);
        let mut recorded = read_record(&record_path).await;
        let remote_versions: BTreeMap<String, FileVersion> = listing
            .iter()
            .map(|(rel, meta)| (rel.clone(), version_of(meta)))
            .collect();
        let mut local_sizes = BTreeMap::new();
        for rel in remote_versions.keys() {
            if let Ok(m) = tokio::fs::metadata(local_file(&local_root, rel)).await {
                local_sizes.insert(rel.clone(), m.len());
            }
        }
        let wanted = plan_downloads(&remote_versions, &recorded, &local_sizes);
        remove_vanished(&local_root, &mut recorded, &remote_versions).await;

        let mut report = MaterializeReport {
            path: local_root.clone(),
            files_cached: remote_versions.len() - wanted.len(),
            ..Default::default()
        };
        if wanted.is_empty() {
            tracing::debug!(uri = %loc, path = %local_root.display(), "cache hit");
            write_record(&record_path, &recorded).await?;
            return Ok(report);
        }
        let total: u64 = wanted.iter().map(|rel| remote_versions[rel].size).sum();
        let progress = Progress::new(format!("downloading {loc}"), total);
        let results: Vec<(String, crate::storage::download::DownloadReport)> =
            futures::stream::iter(wanted.iter().cloned())
                .map(|rel| {
                    let meta = &listing[&rel];
                    let dest = local_file(&local_root, &rel);
                    let file_remote = remote.at_key(meta.location.as_ref());
                    let progress = &progress;
                    async move {
                        let r = download_with_refresh(
                            &file_remote,
                            meta,
                            &dest,
                            &self.options,
                            progress,
                        )
                        .await?;
                        Ok::<_, StorageError>((rel, r))
                    }
                })
                .buffer_unordered(4)
                .try_collect()
                .await?;
        progress.finish();
        for (rel, r) in &results {
            report.files_downloaded += 1;
            report.bytes_fetched += r.bytes_fetched;
            report.chunks_reused += r.chunks_reused;
            recorded.insert(rel.clone(), remote_versions[rel].clone());
        }
        if !single_file {
            verify_against_manifest(remote, &local_root, &wanted).await?;
        }
        write_record(&record_path, &recorded).await?;
        Ok(report)
    }
}

/// `materialize` with the cache from the environment.
pub async fn materialize(uri: &str) -> Result<PathBuf> {
    Cache::from_env().materialize(uri).await
}

fn relative_for(loc: &RemoteLocation) -> PathBuf {
    let mut path = PathBuf::from(loc.scheme.as_str()).join(&loc.bucket);
    if !loc.key.is_empty() {
        path.push(&loc.key);
    }
    path
}

fn local_file(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn version_of(meta: &ObjectMeta) -> FileVersion {
    FileVersion {
        size: meta.size,
        e_tag: meta.e_tag.clone(),
    }
}

/// Lists the objects under the prefix (a folder) or, when there are none, the object
/// itself (a single file, relative name ""). Listings without ETags are completed by HEAD.
async fn list_target(remote: &Remote) -> Result<(BTreeMap<String, ObjectMeta>, bool)> {
    let loc = &remote.location;
    let uri = loc.to_string();
    let prefix = loc.object_path();
    let prefix = (!loc.key.is_empty()).then_some(&prefix);
    let objects: Vec<ObjectMeta> = remote
        .store
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| StorageError::remote("list", &uri, e))?;
    let mut listing = BTreeMap::new();
    for meta in objects {
        let Some(rel) = loc.with_key(meta.location.as_ref()).relative_to(loc) else {
            continue;
        };
        listing.insert(rel, meta);
    }
    if listing.is_empty() {
        if loc.key.is_empty() {
            return Err(StorageError::NotFound { uri });
        }
        let meta = remote
            .store
            .head(&loc.object_path())
            .await
            .map_err(|e| StorageError::remote("read", &uri, e))?;
        return Ok((BTreeMap::from([(String::new(), meta)]), true));
    }
    let missing: Vec<String> = listing
        .iter()
        .filter(|(_, m)| m.e_tag.is_none())
        .map(|(rel, _)| rel.clone())
        .collect();
    let headed: Vec<(String, ObjectMeta)> = futures::stream::iter(missing)
        .map(|rel| {
            let path = listing[&rel].location.clone();
            let uri = loc.join(&rel).to_string();
            async move {
                let meta = remote
                    .store
                    .head(&path)
                    .await
                    .map_err(|e| StorageError::remote("read", uri, e))?;
                Ok::<_, StorageError>((rel, meta))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    listing.extend(headed);
    Ok((listing, false))
}

/// Downloads one file; if the object is replaced mid-way, starts over once on the new
/// version instead of mixing two versions.
async fn download_with_refresh(
    remote: &Remote,
    meta: &ObjectMeta,
    dest: &Path,
    options: &DownloadOptions,
    progress: &Progress,
) -> Result<crate::storage::download::DownloadReport> {
    match download_object(remote, meta, dest, options, progress).await {
        Err(StorageError::Changed { uri, .. }) => {
            tracing::warn!(%uri, "object changed while downloading; starting over on the new version");
            let fresh = remote
                .store
                .head(&meta.location)
                .await
                .map_err(|e| StorageError::remote("read", &uri, e))?;
            download_object(remote, &fresh, dest, options, progress).await
        }
        other => other,
    }
}

/// Removes local files whose remote object is gone, so a folder mirrors the remote one.
async fn remove_vanished(
    root: &Path,
    recorded: &mut BTreeMap<String, FileVersion>,
    remote: &BTreeMap<String, FileVersion>,
) {
    let gone: Vec<String> = recorded
        .keys()
        .filter(|k| !remote.contains_key(*k))
        .cloned()
        .collect();
    for rel in gone {
        let _ = tokio::fs::remove_file(local_file(root, &rel)).await;
        recorded.remove(&rel);
    }
}

/// A downloaded checkpoint is checked against its manifest's checksums.
async fn verify_against_manifest(
    remote: &Remote,
    root: &Path,
    downloaded: &[String],
) -> Result<()> {
    let manifest_path = root.join(MANIFEST_NAME);
    let Ok(text) = tokio::fs::read(&manifest_path).await else {
        return Ok(());
    };
    let uri = remote.location.join(MANIFEST_NAME).to_string();
    let manifest = Manifest::parse(&text, &uri)?;
    for entry in &manifest.files {
        if !downloaded.contains(&entry.path) {
            continue;
        }
        let path = root.join(&entry.path);
        let digest = sha256_file(&path).await?;
        if digest != entry.sha256 {
            // Drop the bad copy so the next call fetches it again.
            let _ = tokio::fs::remove_file(&path).await;
            return Err(StorageError::Corrupt {
                uri: remote.location.join(&entry.path).to_string(),
                reason: format!(
                    "sha256 {digest} differs from the manifest's {}",
                    entry.sha256
                ),
            });
        }
    }
    Ok(())
}

async fn read_record(path: &Path) -> BTreeMap<String, FileVersion> {
    match tokio::fs::read(path).await {
        Ok(text) => serde_json::from_slice(&text).unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    }
}

async fn write_record(path: &Path, record: &BTreeMap<String, FileVersion>) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StorageError::io("create folder", parent, e))?;
    }
    let text = serde_json::to_vec_pretty(record)
        .map_err(|e| StorageError::io("encode", path, e.into()))?;
    write_atomic(path, &text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(size: u64, tag: &str) -> FileVersion {
        FileVersion {
            size,
            e_tag: Some(tag.into()),
        }
    }

    #[test]
    fn plan_fetches_missing_changed_and_truncated_files_only() {
        let remote = BTreeMap::from([
            ("config.json".to_string(), v(10, "a")),
            ("model.safetensors".to_string(), v(100, "b")),
            ("tokenizer.json".to_string(), v(20, "c")),
            ("new.txt".to_string(), v(1, "d")),
        ]);
        let recorded = BTreeMap::from([
            ("config.json".to_string(), v(10, "a")),
            ("model.safetensors".to_string(), v(100, "OLD")),
            ("tokenizer.json".to_string(), v(20, "c")),
        ]);
        let local = BTreeMap::from([
            ("config.json".to_string(), 10),
            ("model.safetensors".to_string(), 100),
            ("tokenizer.json".to_string(), 7),
        ]);
        assert_eq!(
            plan_downloads(&remote, &recorded, &local),
            vec!["model.safetensors", "new.txt", "tokenizer.json"]
        );
        let all_fresh = BTreeMap::from([("config.json".to_string(), v(10, "a"))]);
        let local = BTreeMap::from([("config.json".to_string(), 10)]);
        assert!(plan_downloads(&all_fresh, &all_fresh, &local).is_empty());
    }

    #[test]
    fn cache_paths_mirror_scheme_bucket_and_key() {
        let cache = Cache::new("/c");
        let loc = Location::parse("gs://b/models/qwen")
            .unwrap()
            .as_remote()
            .unwrap()
            .clone();
        assert_eq!(cache.local_path(&loc), PathBuf::from("/c/gs/b/models/qwen"));
        assert_eq!(
            cache.record_path(&loc),
            PathBuf::from("/c/.records/gs/b/models/qwen.json")
        );
        assert_eq!(
            cache.lock_path(&loc),
            PathBuf::from("/c/.locks/gs/b/models/qwen.lock")
        );
    }

    #[tokio::test]
    async fn local_paths_pass_through() {
        let cache = Cache::new("/nonexistent-cache");
        assert_eq!(
            cache.materialize("./models/x").await.unwrap(),
            PathBuf::from("./models/x")
        );
        let err = cache
            .materialize("ftp://h/x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://h/x"), "{err}");
    }
}
