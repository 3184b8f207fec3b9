//! Starts the real server on 127.0.0.1 (an ephemeral port) over a tiny fixture model, and
//! small helpers over reqwest for its tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeswift_args::Args;
use kubeswift_args::cli::{Cli, parse};
use kubeswift_runtime::infer::command::load_model;
use kubeswift_runtime::infer::params;
use kubeswift_runtime::model::Pretrained;
use kubeswift_runtime::serve::{self, RunningServer, ServeConfig};
use kubeswift_runtime::template::{Message, Template};
use serde_json::Value;

pub const MODEL: &str = "tiny-Qwen2.5";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

pub fn deploy_args(extra: &[&str]) -> Args {
    let model = fixture(MODEL).display().to_string();
    let mut argv = vec![
        "swift".to_string(),
        "deploy".into(),
        "--model".into(),
        model,
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    match parse(argv.into_iter().map(std::ffi::OsString::from)).unwrap() {
        Cli::Run { resolved, .. } => resolved.args,
        Cli::Exit { text, .. } => panic!("{text}"),
    }
}

/// The fixture model, its template and the server's default generation settings.
pub struct Loaded {
    pub model: Arc<Pretrained>,
    pub template: Template,
    pub defaults: kubeswift_runtime::infer::GenerationParams,
}

pub fn load(args: &Args) -> Loaded {
    let model = load_model(args, &fixture(MODEL)).unwrap();
    let template = Template::from_args(
        args,
        model.model_type.name,
        model.tokenizer.clone(),
        &model.tokenizer_config,
    )
    .unwrap();
    let defaults = params::for_model(args, &model, &template).unwrap();
    Loaded {
        model: Arc::new(model),
        template,
        defaults,
    }
}

/// The PEFT-made fixture LoRA adapter of the tiny Qwen2.5 model (random A and B, so it
/// changes the answers).
pub fn fixture_adapter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training/adapter")
}

/// A LoRA adapter of our own on every linear layer (rank 8, random A and B from `seed`),
/// saved in PEFT's format to `dir/name`.
pub fn make_adapter(dir: &Path, name: &str, seed: u64) -> PathBuf {
    use kubeswift_runtime::tuner::lora::LoraAdapters;
    use kubeswift_runtime::tuner::lora_config::{Init, LoraConfig, Targets};
    let mut model = load_model(&deploy_args(&[]), &fixture(MODEL)).unwrap();
    let cfg = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        train_bias: false,
        dtype: None,
        targets: Targets::AllLinear,
        modules_to_save: Vec::new(),
        use_rslora: false,
        use_dora: false,
        lorap_lr_ratio: None,
        init: Init::Random,
    };
    let adapters = LoraAdapters::inject(&mut model.model, &cfg, seed, MODEL).unwrap();
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    adapters.save(&out).unwrap();
    out
}

/// The fixture model with `adapters` attached for multi-LoRA (adapter `i` of the list gets
/// id `i`).
pub fn load_with_adapters(args: &Args, adapters: &[PathBuf]) -> Loaded {
    let mut model = load_model(args, &fixture(MODEL)).unwrap();
    kubeswift_runtime::tuner::multi_lora::AdapterSet::attach(&mut model.model, adapters).unwrap();
    let template = Template::from_args(
        args,
        model.model_type.name,
        model.tokenizer.clone(),
        &model.tokenizer_config,
    )
    .unwrap();
    let defaults = params::for_model(args, &model, &template).unwrap();
    Loaded {
        model: Arc::new(model),
        template,
        defaults,
    }
}

/// Starts a server over an already loaded model (e.g. with adapters attached).
pub async fn start_loaded(loaded: Loaded, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let mut config = ServeConfig::for_model(MODEL);
    tune(&mut config);
    let listener = serve::bind(&config).await.unwrap();
    let server = serve::start(
        listener,
        loaded.model,
        loaded.template,
        loaded.defaults,
        config,
    )
    .unwrap();
    TestServer {
        url: format!("http://{}", server.addr),
        client: reqwest::Client::new(),
        server: Some(server),
    }
}

pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    pub server: Option<RunningServer>,
}

/// Starts a server with the deploy defaults, adjusted by `tune`.
pub async fn start(tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let args = deploy_args(&[]);
    let loaded = load(&args);
    let mut config = ServeConfig::for_model(MODEL);
    tune(&mut config);
    let listener = serve::bind(&config).await.unwrap();
    let server = serve::start(
        listener,
        loaded.model,
        loaded.template,
        loaded.defaults,
        config,
    )
    .unwrap();
    TestServer {
        url: format!("http://{}", server.addr),
        client: reqwest::Client::new(),
        server: Some(server),
    }
}

impl TestServer {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A streaming request's `data:` payloads, in order (`[DONE]` included).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        data_lines(&r.text().await.unwrap())
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// The `data:` payloads of an SSE body.
pub fn data_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.to_string())
        .collect()
}

/// The text of a chat stream: concatenated delta contents of choice `index`.
pub fn chat_stream_text(lines: &[String], index: u64) -> String {
    lines
        .iter()
        .filter(|l| *l != "[DONE]")
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"].as_u64() == Some(index))
        .filter_map(|c| c["delta"]["content"].as_str().map(String::from))
        .collect()
}

/// What the engine generates for `messages` alone (greedy with the model's other defaults,
/// `max_new_tokens`), outside any
/// server: the reference the HTTP answers must equal.
pub fn engine_alone(loaded: &Loaded, messages: &[Message], max_new_tokens: usize) -> String {
    use kubeswift_runtime::infer::{Engine, Request};
    let prompt = loaded.template.encode_prompt(messages).unwrap();
    let mut params = loaded.defaults.clone();
    params.max_new_tokens = Some(max_new_tokens);
    params.sampling.temperature = 0.0;
    let mut engine = Engine::new(&loaded.model.model, &loaded.model.tokenizer, 1);
    let out = engine
        .generate(vec![Request { prompt, params }], |_| {})
        .unwrap()
        .remove(0);
    kubeswift_runtime::serve::stop::trim_at_stop(&out.text, &loaded.defaults.stop_words)
}
