//! Harness of the controller tests: a Kubernetes API emulator on 127.0.0.1 (tests/emulator/,
//! kmock-based), the CRDs installed there, and the real controllers running against it.
//! `scripts/test` starts one emulator for the whole run (KUBESWIFT_EMULATOR_URL); without it
//! each test binary starts its own from the tools `scripts/tools` installs.

#![allow(dead_code)]

use std::future::Future;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use kubeswift_crds::ProgressReport;
use kubeswift_operator::build::Defaults;
use kubeswift_operator::controller;
use kubeswift_operator::metrics::Metrics;
use kubeswift_operator::progress::{ProgressSource, Target};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Emulator {
    url: String,
    // Held open for the life of the test process: the emulator exits when it closes.
    _stdin: Option<Mutex<ChildStdin>>,
    _child: Option<Mutex<Child>>,
}

fn emulator() -> &'static Emulator {
    static EMULATOR: OnceLock<Emulator> = OnceLock::new();
    EMULATOR.get_or_init(|| {
        if let Ok(url) = std::env::var("KUBESWIFT_EMULATOR_URL") {
            return Emulator {
                url,
                _stdin: None,
                _child: None,
            };
        }
        let python = root().join(".cache/tools/venv/bin/python");
        assert!(
            python.exists(),
            "the API emulator's tools are missing: run scripts/tools (scripts/test does)"
        );
        let mut child = Command::new(python)
            .arg(root().join("tests/emulator/kube_emulator.py"))
            .args(["--port", "0", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the emulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("http://127.0.0.1:"),
            "emulator said {line:?}"
        );
        Emulator {
            url: line.trim().to_string(),
            _stdin: child.stdin.take().map(Mutex::new),
            _child: Some(Mutex::new(child)),
        }
    })
}

/// The emulator's URL.
pub fn url() -> String {
    emulator().url.clone()
}

/// A client of the emulator with `namespace` as default.
pub async fn client(namespace: &str) -> Client {
    let mut config = Config::new(url().parse().unwrap());
    config.default_namespace = namespace.to_string();
    let client = Client::try_from(config).unwrap();
    install_crds(&client).await;
    client
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kubeswift_crds::crds().unwrap() {
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("install CRD: {e}"),
        }
    }
}

/// A progress source the test controls, recording who asked.
#[derive(Default)]
pub struct FakeProgress {
    pub report: Mutex<Option<ProgressReport>>,
    pub asked: Mutex<Vec<Target>>,
}

impl ProgressSource for FakeProgress {
    fn fetch<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<ProgressReport>, String>> {
        self.asked.lock().unwrap().push(target.clone());
        let report = self.report.lock().unwrap().clone();
        async move { Ok(report) }.boxed()
    }
}

/// The controllers of one namespace, running until dropped.
pub struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub metrics: Arc<Metrics>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts the real controllers for `namespace`.
pub fn start_operator(client: Client, namespace: &str, progress: Arc<FakeProgress>) -> Operator {
    let metrics = Arc::new(Metrics::default());
    let ctx = controller::context(
        client,
        Defaults::default(),
        metrics.clone(),
        progress,
        b"test-key".to_vec(),
        Duration::from_millis(300),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    }
    .boxed()
    .shared();
    tokio::spawn(controller::run_scope(
        ctx,
        Some(namespace.to_string()),
        shutdown,
    ));
    Operator {
        stop: Some(tx),
        metrics,
    }
}

/// Polls `check` until it returns Some, failing after `secs` with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace name unique to this test run.
pub fn namespace(test: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{test}-{}-{n}", std::process::id())
}
