//! Object-store clients built from the environment, the way a Kubernetes Secret mounts
//! credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`/`AWS_ENDPOINT` (S3-compatible servers, path-style by default),
//! `AWS_ALLOW_HTTP`; `GOOGLE_APPLICATION_CREDENTIALS`/`GOOGLE_SERVICE_ACCOUNT`;
//! `AZURE_STORAGE_ACCOUNT_NAME`/`AZURE_STORAGE_ACCOUNT_KEY`/`AZURE_STORAGE_SAS_TOKEN`.
//!
//! Every request goes through object_store's retry loop (exponential backoff on 5xx,
//! throttling and connection errors) with a per-request timeout; our own tunables are
//! `KUBESWIFT_STORAGE_MAX_RETRIES` and `KUBESWIFT_STORAGE_RETRY_TIMEOUT_SECS`, and the
//! client's own `AWS_TIMEOUT`/`AWS_CONNECT_TIMEOUT` (e.g. `60s`) still apply.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::storage::error::{Result, StorageError};
use crate::storage::location::{RemoteLocation, Scheme};

/// Environment variable: how many times one request is retried (default 10).
pub const ENV_MAX_RETRIES: &str = "KUBESWIFT_STORAGE_MAX_RETRIES";
/// Environment variable: give up retrying one request after this many seconds (default 180).
pub const ENV_RETRY_TIMEOUT: &str = "KUBESWIFT_STORAGE_RETRY_TIMEOUT_SECS";

/// Connection settings: the environment variables a client is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreConfig {
    vars: Vec<(String, String)>,
}

impl StoreConfig {
    /// The process environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Explicit variables (tests, or a config assembled by the operator).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        // Only the variables a client reads, so unrelated ones do not split the client cache.
        let relevant = |k: &str| {
            ["AWS_", "GOOGLE_", "AZURE_", "KUBESWIFT_STORAGE_"]
                .iter()
                .any(|p| k.starts_with(p))
                || k == "SERVICE_ACCOUNT"
        };
        let mut vars: Vec<_> = vars.into_iter().filter(|(k, _)| relevant(k)).collect();
        vars.sort();
        Self { vars }
    }

    /// The same settings with one variable set (replacing any earlier value).
    pub fn with_var(mut self, key: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_string(), value.to_string()));
        self.vars.sort();
        self
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }

    /// Retry policy: object_store's exponential backoff with our bounds.
    pub fn retry(&self) -> Result<RetryConfig> {
        let max_retries = parse_setting(self, ENV_MAX_RETRIES, 10usize)?;
        let timeout_secs = parse_setting(self, ENV_RETRY_TIMEOUT, 180u64)?;
        Ok(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries,
            retry_timeout: Duration::from_secs(timeout_secs),
        })
    }
}

fn parse_setting<T: std::str::FromStr>(cfg: &StoreConfig, key: &str, default: T) -> Result<T> {
    match cfg.get(key) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| StorageError::BadSetting {
            name: key.to_string(),
            value: value.to_string(),
            reason: "expected a non-negative integer".to_string(),
        }),
    }
}

/// Builds a client for the bucket of `loc`. Nothing is contacted yet: a wrong endpoint or
/// credentials surface on the first request, as an error naming the URI.
pub fn build_store(loc: &RemoteLocation, cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let retry = cfg.retry()?;
    let config_error = |source| StorageError::Config {
        uri: loc.to_string(),
        source,
    };
    let store: Arc<dyn ObjectStore> = match loc.scheme {
        Scheme::S3 => {
            let mut builder = AmazonS3Builder::new().with_retry(retry);
            for (key, value) in cfg.with_prefix("AWS_") {
                if let Ok(key) = key.parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            // The URI's bucket wins over a stray AWS_BUCKET in the environment.
            let builder = builder.with_bucket_name(&loc.bucket);
            Arc::new(builder.build().map_err(config_error)?)
        }
        Scheme::Gcs => {
            let mut builder = GoogleCloudStorageBuilder::new().with_retry(retry);
            if let Some(path) = cfg.get("SERVICE_ACCOUNT") {
                builder = builder.with_service_account_path(path);
            }
            for (key, value) in cfg.with_prefix("GOOGLE_") {
                if let Ok(key) = key.parse::<GoogleConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let builder = builder.with_bucket_name(&loc.bucket);
            Arc::new(builder.build().map_err(config_error)?)
        }
        Scheme::Azure => {
            let mut builder = MicrosoftAzureBuilder::new().with_retry(retry);
            for (key, value) in cfg.with_prefix("AZURE_") {
                if let Ok(key) = key.parse::<AzureConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
            let builder = builder.with_container_name(&loc.bucket);
            Arc::new(builder.build().map_err(config_error)?)
        }
    };
    Ok(store)
}

/// A location together with the client that reaches it; what every remote operation takes.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The client for the location's bucket.
    pub store: Arc<dyn ObjectStore>,
    /// The object or prefix this handle points at.
    pub location: RemoteLocation,
}

impl Remote {
    /// A handle with a client built from the process environment.
    ///
    /// Clients are not cached process-wide on purpose: a pooled connection belongs to the
    /// tokio runtime that opened it, and the blocking dataset reader runs its own runtime.
    /// Keep and clone a `Remote` to reuse its connections.
    pub fn open(location: &RemoteLocation) -> Result<Remote> {
        Self::open_with(location, &StoreConfig::from_env())
    }

    /// A handle with a client built from explicit settings.
    pub fn open_with(location: &RemoteLocation, cfg: &StoreConfig) -> Result<Remote> {
        Ok(Remote {
            store: build_store(location, cfg)?,
            location: location.clone(),
        })
    }

    /// A handle over a given client (tests wrap stores to inject faults).
    pub fn with_store(store: Arc<dyn ObjectStore>, location: RemoteLocation) -> Remote {
        Remote { store, location }
    }

    /// The same client pointed at `name` under this location.
    pub fn join(&self, name: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            location: self.location.join(name),
        }
    }

    /// The same client pointed at another key of the bucket.
    pub fn at_key(&self, key: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            location: self.location.with_key(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::location::Location;

    fn loc(uri: &str) -> RemoteLocation {
        Location::parse(uri).unwrap().as_remote().unwrap().clone()
    }

    #[test]
    fn retry_settings_come_from_the_environment() {
        let cfg = StoreConfig::from_vars([
            (ENV_MAX_RETRIES.to_string(), "3".to_string()),
            (ENV_RETRY_TIMEOUT.to_string(), "7".to_string()),
        ]);
        let retry = cfg.retry().unwrap();
        assert_eq!(
            (retry.max_retries, retry.retry_timeout),
            (3, Duration::from_secs(7))
        );
        let defaults = StoreConfig::from_vars([]).retry().unwrap();
        assert_eq!(defaults.max_retries, 10);
        let err = StoreConfig::from_vars([(ENV_MAX_RETRIES.to_string(), "many".to_string())])
            .retry()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ENV_MAX_RETRIES) && err.contains("many"),
            "{err}"
        );
    }

    #[test]
    fn s3_client_builds_for_a_custom_endpoint() {
        let cfg = StoreConfig::from_vars([
            ("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "k".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
        ]);
        let store = build_store(&loc("s3://bucket/x"), &cfg).unwrap();
        let shown = store.to_string();
        assert!(shown.contains("bucket"), "{shown}");
    }

    #[test]
    fn azure_without_an_account_is_a_config_error_naming_the_uri() {
        let err = build_store(&loc("az://container/x"), &StoreConfig::from_vars([])).unwrap_err();
        assert!(matches!(err, StorageError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains("az://container/x"), "{err}");
    }
}
