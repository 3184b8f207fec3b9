//! The server's settings, resolved once from `swift deploy`'s arguments (a pure function,
//! so tests build the same struct directly).

use std::time::Duration;

use kubeswift_args::Args;

use super::adapters::ServedAdapters;
use crate::infer::EngineOptions;

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
    /// `--gpu_memory_utilization`: the share of the memory the server may use (weights and
    /// KV cache); the command turns it into `kv_budget_tokens` once the model is loaded.
    pub memory_utilization: f64,
    /// Most tokens in the KV cache; `None`: no budget.
    pub kv_budget_tokens: Option<usize>,
    /// Most prompt tokens prefilled per engine step (chunked prefill).
    pub max_step_tokens: usize,
    /// `--enable_prefix_caching`.
    pub prefix_caching: bool,
    /// `--max_model_len`: the longest context served.
    pub max_model_len: Option<usize>,
}

/// Batch size when `--max_batch_size` is not given: ms-swift's default of 1 suits its
/// one-request-at-a-time pt engine; a continuous-batching server wants a real batch.
pub const DEPLOY_DEFAULT_BATCH: usize = 32;

/// Waiting requests per batch slot before back-pressure (429).
const QUEUE_PER_SLOT: usize = 4;

/// Prompt tokens per engine step: on a CPU a 512-token chunk is a few hundred
/// milliseconds of prefill for a ~100M model, so running streams keep flowing while a long
/// prompt is read (vLLM's chunked prefill, whose default is larger for GPUs).
pub const DEFAULT_STEP_TOKENS: usize = 512;

/// The environment variable `swift deploy` reads its API key from when `--api_key` is not
/// given: a pod takes it from a Secret (`env[].valueFrom.secretKeyRef`), so the key is
/// not written into the SwiftDeployment or the pod's command line for anyone who can read
/// them (vLLM's `VLLM_API_KEY`).
pub const API_KEY_ENV: &str = "SWIFT_API_KEY";

/// The key to require: `--api_key` when given (empty: none), else [`API_KEY_ENV`] (empty
/// or unset: none).
pub fn api_key(arg: Option<&str>, env: Option<String>) -> Option<String> {
    match arg {
        Some(key) => Some(key.to_string()),
        None => env,
    }
    .filter(|k| !k.is_empty())
}

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
            // An empty key (a chart value left blank) means no key, as in vLLM: kept as
            // a key it would be one no client can send, and every request would be a 401.
            api_key: api_key(args.str("api_key"), std::env::var(API_KEY_ENV).ok()),
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
            memory_utilization: args.float("gpu_memory_utilization").unwrap_or(0.9),
            prefix_caching: args.opt_bool("enable_prefix_caching").unwrap_or(false),
            max_model_len: args
                .int("max_model_len")
                .filter(|&m| m > 0)
                .map(|m| m as usize),
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
            memory_utilization: 0.9,
            kv_budget_tokens: None,
            max_step_tokens: DEFAULT_STEP_TOKENS,
            prefix_caching: false,
            max_model_len: None,
        }
    }

    /// What the engine loop runs with.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            max_batch_size: self.max_batch_size,
            kv_budget_tokens: self.kv_budget_tokens,
            max_step_tokens: self.max_step_tokens,
            prefix_caching: self.prefix_caching,
            max_model_len: self.max_model_len,
        }
    }
}

/// The KV budget in tokens: `utilization` of the memory the server may use (`limit`
/// bytes: the pod's cgroup limit, else the machine's), less what the process already
/// holds (`used`: weights, tokenizer, runtime), at `bytes_per_token`.
pub fn kv_budget_tokens(
    utilization: f64,
    limit: u64,
    used: u64,
    bytes_per_token: usize,
) -> Result<usize, String> {
    if !(utilization > 0.0 && utilization <= 1.0) {
        return Err(format!(
            "--gpu_memory_utilization {utilization}: expected a fraction in (0, 1]"
        ));
    }
    let allowed = (limit as f64 * utilization) as u64;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let room = allowed.saturating_sub(used);
    let tokens = (room / bytes_per_token.max(1) as u64) as usize;
    if tokens < 2 {
        return Err(format!(
            "--gpu_memory_utilization {utilization} of {:.2} GiB is {:.2} GiB, and the model \
             already takes {:.2} GiB: no room for the KV cache (raise it, or give the pod more \
             memory)",
            gib(limit),
            gib(allowed),
            gib(used)
        ));
    }
    Ok(tokens)
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
        assert_eq!(c.memory_utilization, 0.9);
        assert!(!c.prefix_caching && c.max_model_len.is_none());
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
    fn the_api_key_comes_from_the_argument_else_the_environment_and_empty_is_none() {
        let env = || Some("from-secret".to_string());
        assert_eq!(api_key(Some("k"), env()).as_deref(), Some("k"));
        assert_eq!(api_key(None, env()).as_deref(), Some("from-secret"));
        assert_eq!(api_key(None, None), None);
        assert_eq!(api_key(None, Some(String::new())), None);
        // An explicitly empty argument turns the key off even with the variable set.
        assert_eq!(api_key(Some(""), env()), None);
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
                "--gpu_memory_utilization",
                "0.5",
                "--enable_prefix_caching",
                "true",
                "--max_model_len",
                "1024",
            ]),
            "tiny",
        );
        assert_eq!(c.memory_utilization, 0.5);
        let e = c.engine_options();
        assert!(e.prefix_caching);
        assert_eq!((e.max_model_len, e.max_batch_size), (Some(1024), 3));
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

    #[test]
    fn the_kv_budget_is_what_the_share_of_memory_leaves_after_the_model() {
        let gib = 1u64 << 30;
        // 0.5 of 8 GiB, 1 GiB already used, 1 MiB per token: 3072 tokens.
        assert_eq!(kv_budget_tokens(0.5, 8 * gib, gib, 1 << 20), Ok(3072));
        let err = kv_budget_tokens(0.1, 8 * gib, gib, 1 << 20).unwrap_err();
        assert!(
            err.contains("--gpu_memory_utilization 0.1") && err.contains("no room"),
            "{err}"
        );
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            let err = kv_budget_tokens(bad, 8 * gib, 0, 1).unwrap_err();
            assert!(err.contains("expected a fraction"), "{err}");
        }
    }
}
