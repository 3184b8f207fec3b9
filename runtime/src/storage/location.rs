//! Where a model, dataset or checkpoint lives: a typed form of the strings users pass
//! (`s3://b/k`, `gs://b/k`, `az://container/k`, `file:///p`, or a plain path).
//!
//! Parsing is pure so every accepted and refused spelling is unit-tested without a network.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::storage::error::StorageError;

/// The object stores we speak to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Amazon S3 and S3-compatible servers (`s3://`, also `s3a://` as Hadoop spells it).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage (`az://container/...`).
    Azure,
}

impl Scheme {
    /// The canonical URI prefix, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Scheme> {
        match prefix.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Some(Scheme::S3),
            "gs" => Some(Scheme::Gcs),
            "az" => Some(Scheme::Azure),
            _ => None,
        }
    }
}

/// An object or a "folder" (key prefix) in a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteLocation {
    /// Which store.
    pub scheme: Scheme,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// Key inside the bucket, `/`-separated, without leading or trailing `/`; empty for the
    /// bucket root.
    pub key: String,
}

impl RemoteLocation {
    /// The key as object_store's path type.
    pub fn object_path(&self) -> object_store::path::Path {
        object_store::path::Path::from(self.key.as_str())
    }

    /// The location of `name` (which may contain `/`) under this one.
    pub fn join(&self, name: &str) -> RemoteLocation {
        let name = name.trim_matches('/');
        let key = match (self.key.is_empty(), name.is_empty()) {
            (_, true) => self.key.clone(),
            (true, false) => name.to_string(),
            (false, false) => format!("{}/{}", self.key, name),
        };
        RemoteLocation {
            scheme: self.scheme,
            bucket: self.bucket.clone(),
            key,
        }
    }

    /// The location of an object path returned by a listing of this bucket.
    pub fn with_key(&self, key: &str) -> RemoteLocation {
        RemoteLocation {
            scheme: self.scheme,
            bucket: self.bucket.clone(),
            key: key.trim_matches('/').to_string(),
        }
    }

    /// The last path segment (file or folder name); empty for a bucket root.
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or("")
    }

    /// The key relative to `prefix` when this location lies strictly under it.
    pub fn relative_to(&self, prefix: &RemoteLocation) -> Option<String> {
        if self.scheme != prefix.scheme || self.bucket != prefix.bucket {
            return None;
        }
        if prefix.key.is_empty() {
            return (!self.key.is_empty()).then(|| self.key.clone());
        }
        let rest = self.key.strip_prefix(&prefix.key)?.strip_prefix('/')?;
        (!rest.is_empty()).then(|| rest.to_string())
    }
}

impl fmt::Display for RemoteLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.bucket)?;
        if !self.key.is_empty() {
            write!(f, "/{}", self.key)?;
        }
        Ok(())
    }
}

/// A parsed storage location: local disk or an object store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A path on this machine (`file://` URIs become plain paths).
    Local(PathBuf),
    /// An object or key prefix in a bucket.
    Remote(RemoteLocation),
}

impl Location {
    /// Parses what a user passed as `--model`, `--dataset`, `--output_dir`, ...
    ///
    /// Anything without `scheme://` is a local path, so Hugging Face style model ids and
    /// relative paths pass through untouched for the caller to interpret.
    pub fn parse(input: &str) -> Result<Location, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: input.to_string(),
            reason: reason.to_string(),
        };
        let Some((prefix, rest)) = input.split_once("://") else {
            if input.is_empty() {
                return Err(invalid("empty path"));
            }
            return Ok(Location::Local(PathBuf::from(input)));
        };
        if prefix.eq_ignore_ascii_case("file") {
            return parse_file_uri(input, rest);
        }
        let Some(scheme) = Scheme::from_prefix(prefix) else {
            return Err(StorageError::UnsupportedScheme {
                uri: input.to_string(),
                scheme: prefix.to_string(),
            });
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name after the scheme"));
        }
        if !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "bucket names may only contain letters, digits, '-', '_' and '.'",
            ));
        }
        let key = key.trim_matches('/');
        if !key.is_empty()
            && key
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(invalid(
                "object keys may not contain empty, '.' or '..' segments",
            ));
        }
        Ok(Location::Remote(RemoteLocation {
            scheme,
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    /// The remote part, if this is an object-store location.
    pub fn as_remote(&self) -> Option<&RemoteLocation> {
        match self {
            Location::Remote(remote) => Some(remote),
            Location::Local(_) => None,
        }
    }

    /// `name` under this location.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(path.join(name)),
            Location::Remote(remote) => Location::Remote(remote.join(name)),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Remote(remote) => write!(f, "{remote}"),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse(s)
    }
}

/// True when `input` names an object store rather than a local path; cheap enough for
/// argument code that only needs to decide whether to call into storage.
pub fn is_remote_uri(input: &str) -> bool {
    matches!(Location::parse(input), Ok(Location::Remote(_)))
}

fn parse_file_uri(input: &str, rest: &str) -> Result<Location, StorageError> {
    // file:///abs/path has an empty authority; file://localhost/abs/path names this host.
    let path = if let Some(path) = rest.strip_prefix("localhost/") {
        format!("/{path}")
    } else if rest.starts_with('/') {
        rest.to_string()
    } else {
        return Err(StorageError::InvalidUri {
            uri: input.to_string(),
            reason: "file:// URIs need an absolute path (file:///path/to/dir)".to_string(),
        });
    };
    Ok(Location::Local(Path::new(&path).to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(input: &str) -> RemoteLocation {
        match Location::parse(input).unwrap() {
            Location::Remote(r) => r,
            other => panic!("{input} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_each_scheme_into_bucket_and_key() {
        let r = remote("s3://bucket/models/qwen/");
        assert_eq!(
            (r.scheme, r.bucket.as_str(), r.key.as_str()),
            (Scheme::S3, "bucket", "models/qwen")
        );
        assert_eq!(remote("s3a://b/k").scheme, Scheme::S3);
        assert_eq!(remote("gs://b/data/x.jsonl").scheme, Scheme::Gcs);
        let az = remote("az://container/runs/exp1");
        assert_eq!(
            (az.scheme, az.bucket.as_str()),
            (Scheme::Azure, "container")
        );
        let root = remote("s3://bucket");
        assert_eq!(root.key, "");
        assert_eq!(root.to_string(), "s3://bucket");
    }

    #[test]
    fn plain_paths_and_file_uris_are_local() {
        assert_eq!(
            Location::parse("Qwen/Qwen2.5-0.5B").unwrap(),
            Location::Local("Qwen/Qwen2.5-0.5B".into())
        );
        assert_eq!(
            Location::parse("/data/a.jsonl").unwrap(),
            Location::Local("/data/a.jsonl".into())
        );
        assert_eq!(
            Location::parse("file:///data/a").unwrap(),
            Location::Local("/data/a".into())
        );
        assert_eq!(
            Location::parse("file://localhost/data/a").unwrap(),
            Location::Local("/data/a".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_the_uri() {
        let err = Location::parse("hdfs://nn/data").unwrap_err().to_string();
        assert!(
            err.contains("hdfs://nn/data") && err.contains("hdfs"),
            "{err}"
        );
        let err = Location::parse("https://example.com/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("https://example.com/x"), "{err}");
        for bad in [
            "s3://",
            "s3:///key",
            "s3://bad bucket/k",
            "s3://b/a//c",
            "s3://b/../x",
            "file://relative/x",
            "",
        ] {
            let err = Location::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn join_and_relative_paths_round_trip() {
        let root = remote("s3://b/runs/exp1");
        let ckpt = root.join("v0-20250101-000000/checkpoint-5/");
        assert_eq!(
            ckpt.to_string(),
            "s3://b/runs/exp1/v0-20250101-000000/checkpoint-5"
        );
        assert_eq!(ckpt.name(), "checkpoint-5");
        assert_eq!(
            ckpt.relative_to(&root).as_deref(),
            Some("v0-20250101-000000/checkpoint-5")
        );
        assert_eq!(root.relative_to(&root), None);
        assert_eq!(remote("s3://b/runs/exp10").relative_to(&root), None);
        assert_eq!(remote("s3://b").join("x").to_string(), "s3://b/x");
        assert_eq!(
            Location::parse(&ckpt.to_string()).unwrap(),
            Location::Remote(ckpt)
        );
    }

    #[test]
    fn is_remote_uri_only_for_object_stores() {
        assert!(is_remote_uri("gs://b/x"));
        assert!(!is_remote_uri("./x"));
        assert!(!is_remote_uri("ftp://x/y"));
    }
}
