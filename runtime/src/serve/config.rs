//! The server's settings, resolved once from `swift deploy`'s arguments (a pure function,
//! so tests build the same struct directly).

use std::time::Duration;

use kubeswift_args::Args;

use super::adapters::ServedAdapters;

/// How `swift deploy` serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// `Authorization: Bearer <api_key>` is required on every route but `/health`.
    pub api_key: Option<String>,
    /// The name clients put in `model` (and `/v1/models` lists).
    pub served_model_name: String,
    pub owned_by: String,
    /// One structured log line per request.
    pub verbose: bool,
    /// Throughput log period; `None` disables it.
    pub log_interval: Option<Duration>,
    /// Most `top_logprobs` (chat) or `logprobs` (completions) a client may ask for.
    pub max_logprobs: usize,
    /// Sequences decoded together (continuous batching).
    pub max_batch_size: usize,
    /// Requests allowed to wait for a batch slot; beyond them the server answers 429.
    pub max_queue: usize,
    /// A request's `max_tokens` when it sets none (`--max_new_tokens`, as ms-swift).
    pub max_new_tokens: Option<usize>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `n` (choices per request).
    pub max_n: usize,
    /// LoRA adapters served beside the base model (`--adapters`, parsed by the command
    /// since it can fail).
    pub adapters: ServedAdapters,
}

/// Batch size when `--max_batch_size` is not given: ms-swift's default of 1 suits its
/// one-request-at-a-time pt engine; a continuous-batching server wants a real batch.
pub const DEPLOY_DEFAULT_BATCH: usize = 32;

/// Waiting requests per batch slot before back-pressure (429).
const QUEUE_PER_SLOT: usize = 4;

impl ServeConfig {
    /// Settings for serving `model_name` with the resolved deploy arguments.
    pub fn from_args(args: &Args, model_name: &str) -> Self {
        let max_batch_size = if args.is_given("max_batch_size") {
            args.int("max_batch_size").unwrap_or(1).max(1) as usize
        } else {
            DEPLOY_DEFAULT_BATCH
        };
        ServeConfig {
            host: args.str("host").unwrap_or("0.0.0.0").to_string(),
            port: args.int("port").unwrap_or(8000).clamp(0, 65535) as u16,
            api_key: args.str("api_key").map(String::from),
            served_model_name: args
                .str("served_model_name")
                .unwrap_or(model_name)
                .to_string(),
            owned_by: args.str("owned_by").unwrap_or("swift").to_string(),
            verbose: args.opt_bool("verbose").unwrap_or(true),
            log_interval: args
                .int("log_interval")
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(s as u64)),
            max_logprobs: args.int("max_logprobs").unwrap_or(20).max(0) as usize,
            max_batch_size,
            max_queue: max_batch_size.saturating_mul(QUEUE_PER_SLOT),
            max_new_tokens: args.int("max_new_tokens").map(|m| m.max(1) as usize),
            ..ServeConfig::for_model(model_name)
        }
    }

    /// Defaults for tests and embedding: loopback, an ephemeral port, no key.
    pub fn for_model(name: &str) -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 0,
            api_key: None,
            served_model_name: name.into(),
            owned_by: "swift".into(),
            verbose: false,
            log_interval: None,
            max_logprobs: 20,
            max_batch_size: DEPLOY_DEFAULT_BATCH,
            max_queue: DEPLOY_DEFAULT_BATCH * QUEUE_PER_SLOT,
            max_new_tokens: None,
            max_body_bytes: 4 << 20,
            max_n: 16,
            adapters: ServedAdapters::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeswift_args::cli::{Cli, parse};

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["swift", "deploy", "--model", "/models/tiny"];
        argv.extend_from_slice(extra);
        match parse(argv.iter().map(std::ffi::OsString::from)).unwrap() {
            Cli::Run { resolved, .. } => resolved.args,
            Cli::Exit { text, .. } => panic!("{text}"),
        }
    }

    #[test]
    fn defaults_follow_the_seed_with_a_real_batch() {
        let c = ServeConfig::from_args(&args(&[]), "tiny");
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8000));
        assert_eq!(c.served_model_name, "tiny");
        assert_eq!(c.owned_by, "swift");
        assert!(c.verbose);
        assert_eq!(c.log_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.max_logprobs, 20);
        assert_eq!(c.max_batch_size, DEPLOY_DEFAULT_BATCH);
        assert_eq!(c.api_key, None);
    }

    #[test]
    fn given_arguments_win() {
        let c = ServeConfig::from_args(
            &args(&[
                "--host",
                "127.0.0.1",
                "--port",
                "9001",
                "--api_key",
                "k",
                "--served_model_name",
                "m",
                "--owned_by",
                "me",
                "--verbose",
                "false",
                "--log_interval",
                "-1",
                "--max_logprobs",
                "5",
                "--max_batch_size",
                "3",
                "--max_new_tokens",
                "17",
            ]),
            "tiny",
        );
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 9001));
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert_eq!(
            (c.served_model_name.as_str(), c.owned_by.as_str()),
            ("m", "me")
        );
        assert!(!c.verbose);
        assert_eq!(c.log_interval, None);
        assert_eq!((c.max_logprobs, c.max_batch_size, c.max_queue), (5, 3, 12));
        assert_eq!(c.max_new_tokens, Some(17));
    }
}
