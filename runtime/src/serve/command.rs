//! `swift deploy`: binds the port (failing fast when it is taken), loads the model and its
//! template, serves until SIGTERM or Ctrl-C, then drains in-flight requests and exits.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use kubeswift_args::Args;

use super::adapters::ServedAdapters;
use super::config::{API_KEY_ENV, ServeConfig, kv_budget_tokens};
use super::memory;
use super::server::{self, shutdown_signal};
use crate::infer::command::load_model;
use crate::infer::params;
use crate::storage::localize::localize_args_blocking;
use crate::template::Template;
use crate::tuner::multi_lora::AdapterSet;

/// Runs `swift deploy` with resolved arguments.
pub fn run(user_args: &Args) -> anyhow::Result<()> {
    let Some(given_model) = user_args.str("model") else {
        bail!(
            "--model is required: a local model folder (config.json, safetensors, tokenizer.json)"
        );
    };
    // Served under the name the user gave (`s3://b/models/qwen` -> `qwen`), read from the
    // local cache when it lives in a bucket (a SwiftDeployment's usual case).
    let model_name = Path::new(given_model)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(given_model)
        .to_string();
    let local_args = localize_args_blocking(user_args)?;
    let args = &local_args;
    let model_path = args.str("model").unwrap_or(given_model);
    let mut config = ServeConfig::from_args(args, &model_name);
    match args.str("api_key") {
        Some("") => tracing::warn!("--api_key is empty: requests are served without a key"),
        None if config.api_key.is_some() => {
            tracing::info!(from = API_KEY_ENV, "requests need the API key")
        }
        _ => {}
    }
    config.adapters = ServedAdapters::parse(&args.strings("adapters"), &config.served_model_name)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("swift-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = server::bind(&config).await?;
        let mut pretrained = load_model(args, Path::new(model_path))?;
        if !config.adapters.is_empty() {
            let set = AdapterSet::attach(&mut pretrained.model, &config.adapters.dirs())?;
            tracing::info!(
                adapters = ?config.adapters.names().collect::<Vec<_>>(),
                default = ?config.adapters.default,
                layers = set.adapted_layers,
                "LoRA adapters loaded (multi-LoRA)"
            );
        }
        let template = Template::from_args(
            args,
            pretrained.model_type.name,
            pretrained.tokenizer.clone(),
            &pretrained.tokenizer_config,
        )?;
        let defaults = params::for_model(args, &pretrained, &template)?;
        let bytes_per_token = pretrained.model.new_kv_cache().bytes_per_token();
        let (limit, used) = (memory::limit_bytes(), memory::resident_bytes());
        let budget = kv_budget_tokens(config.memory_utilization, limit, used, bytes_per_token)
            .map_err(anyhow::Error::msg)?;
        config.kv_budget_tokens = Some(budget);
        tracing::info!(
            kv_budget_tokens = budget,
            kv_bytes_per_token = bytes_per_token,
            memory_limit_gib = limit as f64 / (1u64 << 30) as f64,
            prefix_caching = config.prefix_caching,
            "KV cache budget"
        );
        let batch = config.max_batch_size;
        let name = config.served_model_name.clone();
        let mut running =
            server::start(listener, Arc::new(pretrained), template, defaults, config)?;
        // One stable line on stdout for scripts and tests that start the server on port 0.
        println!("kubeswift serving {name} on http://{}", running.addr);
        tracing::info!(addr = %running.addr, model = %name, max_batch_size = batch, "serving");
        let trigger = running.take_shutdown();
        tokio::spawn(async move {
            shutdown_signal().await;
            if let Some(t) = trigger {
                let _ = t.send(());
            }
        });
        running.wait().await?;
        tracing::info!("server stopped");
        anyhow::Ok(())
    })
}
