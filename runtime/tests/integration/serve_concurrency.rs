//! Continuous batching under load: 32 simultaneous streaming requests with different
//! sampling settings and LoRA adapters (the base model and two adapters, multi-LoRA) all
//! complete, and each equals the answer it gets alone (greedy ones, and seeded samples
//! too, since every request has its own generator).

use crate::serve_support;

use serde_json::{Value, json};
use serve_support::*;

/// The base model and the two adapters the server holds.
const MODELS: [&str; 3] = [MODEL, "alpha", "beta"];

fn request(i: usize) -> Value {
    let prompt = format!(
        "Request number {i}: tell me about {}",
        ["cats", "rust", "rain", "maps"][i % 4]
    );
    let mut body = json!({
        "model": MODELS[i % 3],
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8 + (i % 5) * 4,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match i % 4 {
        0 => body["temperature"] = json!(0),
        1 => {
            body["temperature"] = json!(0.8);
            body["top_p"] = json!(0.9);
            body["seed"] = json!(i);
        }
        2 => {
            body["temperature"] = json!(0);
            body["repetition_penalty"] = json!(1.3);
        }
        _ => {
            body["temperature"] = json!(1.2);
            body["top_k"] = json!(5);
            body["seed"] = json!(1000 + i);
            body["stop"] = json!(["\n"]);
        }
    }
    body
}

async fn text_of(s: &TestServer, body: &Value) -> (String, Value) {
    let lines = s.stream("/v1/chat/completions", body).await;
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(usage["model"], body["model"], "answered by another model");
    (chat_stream_text(&lines, 0), usage["usage"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streams_each_equal_their_answer_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let beta = make_adapter(tmp.path(), "beta", 5);
    let entries = vec![
        format!("alpha={}", fixture_adapter().display()),
        format!("beta={}", beta.display()),
    ];
    let loaded = load_with_adapters(&deploy_args(&[]), &[fixture_adapter(), beta]);
    let s = start_loaded(loaded, |c| {
        c.max_batch_size = 16;
        c.max_queue = 64;
        c.adapters =
            kubeswift_runtime::serve::adapters::ServedAdapters::parse(&entries, MODEL).unwrap();
    })
    .await;
    let bodies: Vec<Value> = (0..32).map(request).collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(text_of(&s, b).await);
    }
    let together = futures::future::join_all(bodies.iter().map(|b| text_of(&s, b))).await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.0, t.0, "request {i}: text differs when batched");
        assert_eq!(a.1, t.1, "request {i}: usage differs when batched");
    }
    // The settings really differ: not every answer is the same text.
    let distinct: std::collections::HashSet<&String> = alone.iter().map(|a| &a.0).collect();
    assert!(distinct.len() > 8, "{distinct:?}");
    // And they really ran together: some steps decoded more than 8 sequences.
    let (_, metrics) = s.get("/metrics").await;
    let steps = |le: &str| -> f64 {
        let key = format!("kubeswift_serve_step_batch_size_bucket{{le=\"{le}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} missing:\n{metrics}"))
    };
    assert!(
        steps("+Inf") > steps("8.0"),
        "no step batched more than 8:\n{metrics}"
    );
    s.shutdown().await;
}

/// A tight KV budget (room for a few requests), prefix caching and small prefill chunks:
/// 12 streams sharing a long system prompt all complete, each equal to its answer alone;
/// the metrics show prefixes served from the cache and the budget respected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_kv_budget_with_prefix_caching_changes_no_answer() {
    let system = "You are Kuby, the assistant of the kubeswift project. You answer questions \
                  about fine-tuning language models on Kubernetes clusters, briefly and politely.";
    let budget = 400;
    let s = start(|c| {
        c.max_batch_size = 8;
        c.max_queue = 64;
        c.kv_budget_tokens = Some(budget);
        c.prefix_caching = true;
        c.max_step_tokens = 16;
    })
    .await;
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            let mut body = request(i);
            body["model"] = json!(MODEL);
            let user = body["messages"][0].clone();
            body["messages"] = json!([{"role": "system", "content": system}, user]);
            body
        })
        .collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(text_of(&s, b).await);
    }
    let together = futures::future::join_all(bodies.iter().map(|b| text_of(&s, b))).await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.0, t.0, "request {i}: text differs under the budget");
        assert_eq!(a.1, t.1, "request {i}: usage differs under the budget");
    }
    let (_, metrics) = s.get("/metrics").await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    // Every request after the first found the system prompt cached.
    assert!(
        value("kubeswift_serve_prefix_cache_hit_tokens_total") >= 11.0 * 30.0,
        "{metrics}"
    );
    assert_eq!(
        value("kubeswift_serve_kv_cache_budget_tokens"),
        budget as f64
    );
    assert!(value("kubeswift_serve_kv_cache_tokens") <= budget as f64);
    s.shutdown().await;
}
