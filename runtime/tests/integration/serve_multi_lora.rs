//! Multi-LoRA serving through the real server: `/v1/models` lists the adapters, a
//! request's `model` picks one (404 naming the known ones otherwise), and each adapter's
//! greedy answer equals the model with that adapter alone — also when requests for two
//! adapters and the base model share one batch.

use crate::serve_support;

use std::path::{Path, PathBuf};

use kubeswift_runtime::infer::{Engine, Event, Request};
use kubeswift_runtime::serve::adapters::ServedAdapters;
use kubeswift_runtime::template::{Message, Role};
use serde_json::{Value, json};
use serve_support::*;

const MAX_TOKENS: usize = 12;

fn alpha() -> PathBuf {
    fixture_adapter()
}

fn make_beta(dir: &Path) -> PathBuf {
    make_adapter(dir, "beta", 5)
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::new(Role::User, text)]
}

/// Greedy text of `messages` on `loaded` alone, with `adapter` (an id of its adapter set).
fn alone(loaded: &Loaded, adapter: Option<usize>, messages: &[Message]) -> String {
    let prompt = loaded.template.encode_prompt(messages).unwrap();
    let mut params = loaded.defaults.clone();
    params.max_new_tokens = Some(MAX_TOKENS);
    params.sampling.temperature = 0.0;
    let mut engine = Engine::new(&loaded.model.model, &loaded.model.tokenizer, 1);
    engine
        .add_request_for(Request { prompt, params }, adapter)
        .unwrap();
    let mut text = None;
    while !engine.is_idle() {
        for event in engine.step().unwrap() {
            if let Event::Finished(out) = event {
                text = Some(out.text);
            }
        }
    }
    kubeswift_runtime::serve::stop::trim_at_stop(&text.unwrap(), &loaded.defaults.stop_words)
}

fn body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    })
}

async fn answer(s: &TestServer, body: &Value) -> String {
    if body["stream"] == json!(true) {
        let lines = s.stream("/v1/chat/completions", body).await;
        assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
        chat_stream_text(&lines, 0)
    } else {
        let (status, r) = s.post("/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["model"], body["model"]);
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

const PROMPTS: [&str; 3] = [
    "Tell me about cats",
    "Write a haiku about rust",
    "What is rain?",
];

/// Greedy answers to each prompt of the base model and of each adapter alone on its own
/// copy of the model: `[base, alpha, beta]` per prompt.
fn references(beta: &Path) -> Vec<[String; 3]> {
    let args = deploy_args(&[]);
    let base = load(&args);
    let only_alpha = load_with_adapters(&args, &[alpha()]);
    let only_beta = load_with_adapters(&args, &[beta.to_path_buf()]);
    let want: Vec<[String; 3]> = PROMPTS
        .iter()
        .map(|p| {
            [
                alone(&base, None, &user(p)),
                alone(&only_alpha, Some(0), &user(p)),
                alone(&only_beta, Some(0), &user(p)),
            ]
        })
        .collect();
    // The adapters really change the answers (else the test could not see a mix-up).
    assert!(want.iter().any(|w| w[0] != w[1]), "{want:?}");
    assert!(want.iter().any(|w| w[0] != w[2]), "{want:?}");
    assert!(want.iter().any(|w| w[1] != w[2]), "{want:?}");
    want
}

#[test]
fn one_engine_step_mixes_adapters_and_the_base_without_changing_any_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let beta = make_beta(tmp.path());
    let want = references(&beta);
    let args = deploy_args(&[]);
    let loaded = load_with_adapters(&args, &[alpha(), beta]);
    let mut engine = Engine::new(&loaded.model.model, &loaded.model.tokenizer, 16);
    let mut ids = Vec::new();
    for (p, prompt) in PROMPTS.iter().enumerate() {
        for (t, adapter) in [None, Some(0), Some(1)].into_iter().enumerate() {
            let mut params = loaded.defaults.clone();
            params.max_new_tokens = Some(MAX_TOKENS);
            params.sampling.temperature = 0.0;
            let prompt = loaded.template.encode_prompt(&user(prompt)).unwrap();
            let id = engine
                .add_request_for(Request { prompt, params }, adapter)
                .unwrap();
            ids.push((id, p, t));
        }
    }
    let mut most_together = 0;
    let mut done = 0;
    while !engine.is_idle() {
        let events = engine.step().unwrap();
        most_together = most_together.max(engine.running_sequences());
        for event in events {
            if let Event::Finished(out) = event {
                let &(_, p, t) = ids.iter().find(|(id, _, _)| *id == out.id).unwrap();
                let text = kubeswift_runtime::serve::stop::trim_at_stop(
                    &out.text,
                    &loaded.defaults.stop_words,
                );
                assert_eq!(text, want[p][t], "prompt {p}, target {t}");
                done += 1;
            }
        }
    }
    assert_eq!(done, ids.len());
    // All nine sequences (three per target) ran in the same steps.
    assert!(most_together >= 6, "{most_together}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_adapter_answers_as_alone_also_sharing_a_batch_with_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let beta = make_beta(tmp.path());
    let want = references(&beta);
    let args = deploy_args(&[]);

    let loaded = load_with_adapters(&args, &[alpha(), beta.clone()]);
    let entries = vec![
        format!("alpha={}", alpha().display()),
        format!("beta={}", beta.display()),
    ];
    let s = start_loaded(loaded, |c| {
        c.max_batch_size = 16;
        c.adapters = ServedAdapters::parse(&entries, MODEL).unwrap();
    })
    .await;

    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, "alpha", "beta"]);
    let (status, card) = s.get("/v1/models/beta").await;
    assert_eq!(status, 200, "{card}");

    let (status, e) = s
        .post("/v1/chat/completions", &body("gamma", "hi", false))
        .await;
    assert_eq!(status, 404, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gamma") && message.contains("alpha") && message.contains("beta"),
        "{message}"
    );
    assert_eq!(e["error"]["code"], "model_not_found");

    let names = [MODEL, "alpha", "beta"];
    let cases: Vec<(usize, usize, Value)> = (0..PROMPTS.len())
        .flat_map(|p| (0..3).map(move |t| (p, t)))
        .map(|(p, t)| (p, t, body(names[t], PROMPTS[p], (p + t) % 2 == 0)))
        .collect();
    // One at a time.
    for (p, t, b) in &cases {
        assert_eq!(answer(&s, b).await, want[*p][*t], "alone: {b}");
    }
    // All nine at once: base and both adapters in the same batches.
    let together = futures::future::join_all(cases.iter().map(|(_, _, b)| answer(&s, b))).await;
    for ((p, t, b), got) in cases.iter().zip(&together) {
        assert_eq!(got, &want[*p][*t], "batched: {b}");
    }
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
        steps("+Inf") > steps("2.0"),
        "no step batched more than 2 sequences:\n{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_adapter_path_is_the_default_under_the_model_name() {
    let args = deploy_args(&[]);
    let only_alpha = load_with_adapters(&args, &[alpha()]);
    let base = load(&args);
    let want: Vec<String> = PROMPTS
        .iter()
        .map(|p| alone(&only_alpha, Some(0), &user(p)))
        .collect();
    let plain: Vec<String> = PROMPTS
        .iter()
        .map(|p| alone(&base, None, &user(p)))
        .collect();
    assert_ne!(want, plain, "the adapter changes no answer");
    let entries = vec![alpha().display().to_string()];
    let s = start_loaded(only_alpha, |c| {
        c.adapters = ServedAdapters::parse(&entries, MODEL).unwrap();
    })
    .await;
    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(models["data"][0]["id"], MODEL);
    for (p, w) in PROMPTS.iter().zip(&want) {
        assert_eq!(&answer(&s, &body(MODEL, p, false)).await, w, "{p}");
    }
    s.shutdown().await;
}
