//! One error type for the storage layer. Every variant names the URI or file it is about,
//! so a user reading a pod log knows which argument or object to fix.

use std::path::PathBuf;

/// What went wrong reading or writing models, datasets and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A `scheme://` we do not serve.
    #[error(
        "unsupported storage URI '{uri}': scheme '{scheme}://' is not supported \
         (use s3://, gs://, az://, file:// or a local path)"
    )]
    UnsupportedScheme { uri: String, scheme: String },

    /// A URI that is malformed.
    #[error("invalid storage URI '{uri}': {reason}")]
    InvalidUri { uri: String, reason: String },

    /// The object-store client could not be built (bad endpoint, missing region, ...).
    #[error("cannot configure a client for '{uri}': {source}")]
    Config {
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// The bucket or container itself does not exist.
    #[error("bucket of '{uri}' does not exist (NoSuchBucket)")]
    BucketNotFound {
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// No object (or no object under a prefix) at the URI.
    #[error("'{uri}' not found")]
    NotFound { uri: String },

    /// The server refused the credentials or their permissions.
    #[error(
        "access to '{uri}' was refused: check the credentials in the environment \
         (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, \
         AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY): {source}"
    )]
    AccessDenied {
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// Any other failure of a remote operation, after the client's retries.
    #[error("{op} '{uri}' failed: {source}")]
    Remote {
        op: &'static str,
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file operation failed.
    #[error("{op} '{}' failed: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An object changed on the server while we were reading it.
    #[error(
        "'{uri}' changed on the server while it was being read (ETag {expected} became {found})"
    )]
    Changed {
        uri: String,
        expected: String,
        found: String,
    },

    /// A transfer ended with a different size or checksum than announced.
    #[error("'{uri}' is corrupt after transfer: {reason}")]
    Corrupt { uri: String, reason: String },

    /// A dataset line that is not what its format requires; `position` is "line N" or,
    /// for a shard that starts mid-file, "the line at byte N".
    #[error("{uri}, {position}: {reason}")]
    BadLine {
        uri: String,
        position: String,
        reason: String,
    },

    /// A setting read from the environment that does not parse.
    #[error("environment variable {name}='{value}' is invalid: {reason}")]
    BadSetting {
        name: String,
        value: String,
        reason: String,
    },

    /// `--resume_from_checkpoint` named one `checkpoint-N` folder that holds no complete
    /// checkpoint.
    #[error(
        "'{location}' names one checkpoint, but no complete checkpoint is there (missing, or \
         its save or upload never finished); name its run or output folder to resume from \
         the newest complete one"
    )]
    NoCheckpoint { location: String },

    /// `--resume_from_checkpoint` found no complete checkpoint at a location other than the
    /// run's own output root, so it is most likely a wrong path rather than a first start.
    #[error(
        "'{location}' {reason}; only the run's own --output_dir ('{output_dir}') may hold no \
         checkpoint yet (a first start); name a checkpoint-N folder, a run folder or an \
         output root that holds a complete checkpoint"
    )]
    NothingToResume {
        location: String,
        reason: String,
        output_dir: String,
    },

    /// A checkpoint manifest that is missing fields or disagrees with the files.
    #[error("checkpoint manifest '{uri}' is invalid: {reason}")]
    BadManifest { uri: String, reason: String },

    /// A background task panicked or was cancelled.
    #[error("{op} for '{uri}' did not finish: {reason}")]
    Task {
        op: &'static str,
        uri: String,
        reason: String,
    },
}

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Turns an object_store error into the variant a user can act on.
    ///
    /// S3 answers a missing bucket with 404 just like a missing key; only the body says
    /// `NoSuchBucket`, so we look for it in the message.
    pub fn remote(op: &'static str, uri: impl ToString, source: object_store::Error) -> Self {
        let uri = uri.to_string();
        let text = source.to_string();
        match source {
            object_store::Error::NotFound { .. } if text.contains("NoSuchBucket") => {
                StorageError::BucketNotFound { uri, source }
            }
            object_store::Error::NotFound { .. } => StorageError::NotFound { uri },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                StorageError::AccessDenied { uri, source }
            }
            _ if text.contains("NoSuchBucket") => StorageError::BucketNotFound { uri, source },
            _ if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") => {
                StorageError::AccessDenied { uri, source }
            }
            _ => StorageError::Remote { op, uri, source },
        }
    }

    /// A local I/O error naming the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for a missing object (not a missing bucket, which is a configuration error).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}
