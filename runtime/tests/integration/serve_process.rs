//! `swift deploy` as a process: it fails fast when the port is taken, prints where it
//! listens, and on SIGTERM finishes the requests in flight before exiting 0.

use crate::serve_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use serve_support::*;

fn deploy(model: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swift"));
    cmd.arg("deploy")
        .arg("--model")
        .arg(model)
        .args(["--host", "127.0.0.1"])
        .args(extra)
        .env("SWIFT_LOG", "info");
    cmd
}

#[test]
fn a_taken_port_fails_fast_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let out = deploy(&fixture(MODEL), &["--port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
    // It fails before loading the model, so well within seconds.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// SmolLM2-135M-Instruct when scripts/fixtures/fetch_smollm2.sh has fetched it (required
/// under KUBESWIFT_REQUIRE_REAL_MODELS=1): slow enough on a CPU that a request is surely
/// in flight when the signal lands. Else the tiny fixture.
fn slow_model() -> (PathBuf, String) {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct");
    if real.join("model.safetensors").is_file() {
        return (real, "SmolLM2-135M-Instruct".into());
    }
    assert!(
        std::env::var("KUBESWIFT_REQUIRE_REAL_MODELS").as_deref() != Ok("1"),
        "SmolLM2-135M-Instruct not found at {}; run scripts/fixtures/fetch_smollm2.sh",
        real.display()
    );
    (fixture(MODEL), MODEL.into())
}

/// Starts the server on an ephemeral port; returns it and its base URL.
fn spawn(model: &Path) -> (Child, String) {
    spawn_with(deploy(model, &["--port", "0", "--verbose", "true"]))
}

fn spawn_with(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address line: {line:?}"))
        .to_string();
    (child, url)
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let (model, name) = slow_model();
    let (mut child, url) = spawn(&model);
    let client = reqwest::Client::new();
    let health = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let body = json!({
        "model": name,
        "messages": [{"role": "user", "content": "Write a long story about a dragon"}],
        "max_tokens": 100,
        "temperature": 0,
        "stream": true,
    });
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // Wait for generated text, so the signal lands mid-generation.
    while !text.contains("\"content\":\"") || text.matches("data: ").count() < 3 {
        let chunk = body.next().await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let before = text.matches("data: ").count();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stream started before the signal still completes.
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let lines = data_lines(&text);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(
        lines.len() > before + 1,
        "nothing generated after the signal"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    assert!(
        client.get(format!("{url}/health")).send().await.is_err(),
        "no longer listening"
    );
}

/// A pod takes its API key from a Secret through `SWIFT_API_KEY` instead of the command
/// line; `/health` stays open for the kubelet's probes.
#[tokio::test]
async fn the_api_key_can_come_from_the_environment() {
    let mut cmd = deploy(&fixture(MODEL), &["--port", "0"]);
    cmd.env("SWIFT_API_KEY", "from-a-secret");
    let (mut child, url) = spawn_with(cmd);
    let client = reqwest::Client::new();
    let status = async |route: &str, key: Option<&str>| {
        let request = client.get(format!("{url}{route}"));
        let request = match key {
            Some(k) => request.bearer_auth(k),
            None => request,
        };
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(status("/v1/models", None).await, 401);
    assert_eq!(status("/v1/models", Some("guess")).await, 401);
    assert_eq!(status("/v1/models", Some("from-a-secret")).await, 200);
    assert_eq!(status("/health", None).await, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}
