//! Pure builders: from a resource to the children it should have. No API calls here; the
//! reconcilers diff what these return against the cluster and apply the difference, and
//! `swift-operator render` prints them. Each concern is a small function applied in turn
//! (env wiring, storage, scheduling, restart policy), as in Kubeflow Trainer's plugins.

pub mod argv;
pub mod deploy;
pub mod hash;
pub mod labels;
pub mod pod;
pub mod sample;
pub mod scheduling;
pub mod storage;
pub mod train;

use kubeswift_args::ArgsError;
use kubeswift_crds::common::reason;

/// Settings of the operator that builders need.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// The `swift` image used when a resource names none.
    pub image: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: DEFAULT_IMAGE.to_string(),
        }
    }
}

/// The image a resource without `spec.image` runs.
pub const DEFAULT_IMAGE: &str = "ghcr.io/kubeswift/swift:latest";

/// Why a resource cannot be turned into children. Every variant names the field to fix;
/// the reconciler turns it into a Failed condition instead of retrying.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `spec.args` fails the `swift` argument rules.
    #[error("{0}")]
    InvalidArgs(#[from] ArgsError),
    /// Two fields set the same thing.
    #[error("{field} {message}")]
    Conflict { field: String, message: String },
    /// A field's value cannot work.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl BuildError {
    /// The condition reason this error is reported with.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::InvalidArgs(_) => reason::INVALID_ARGS,
            BuildError::Conflict { .. } | BuildError::Invalid { .. } => reason::INVALID_SPEC,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
