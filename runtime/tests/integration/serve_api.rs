//! The OpenAI-compatible server over HTTP: routes, streaming, sampling fields, errors,
//! back-pressure, cancellation and metrics, against the real server on 127.0.0.1.

use crate::serve_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kubeswift_runtime::template::Message;
use serde_json::{Value, json};
use serve_support::*;

fn chat(content: &str, max_tokens: u64) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[tokio::test]
async fn health_models_metrics_and_the_api_key() {
    let s = start(|c| {
        c.api_key = Some("sk-test".into());
        c.owned_by = "kubeswift-tests".into();
    })
    .await;
    assert_eq!(s.get("/health").await.0, 200, "/health needs no key");
    for path in ["/v1/models", "/metrics"] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["code"], "invalid_api_key");
    }
    let wrong = s
        .client
        .get(format!("{}/v1/models", s.url))
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let (status, _) = s.post("/v1/chat/completions", &chat("hi", 2)).await;
    assert_eq!(status, 401, "the key guards generation too");
    let models: Value = s
        .client
        .get(format!("{}/v1/models", s.url))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["owned_by"], "kubeswift-tests");
    s.shutdown().await;
}

#[tokio::test]
async fn chat_completion_equals_the_engine_alone_and_counts_usage() {
    let args = deploy_args(&[]);
    let loaded = load(&args);
    let messages = [
        Message::system("You are terse."),
        Message::user("Tell me a story"),
    ];
    let expected = engine_alone(&loaded, &messages, 12);
    let prompt_tokens = loaded.template.encode_prompt(&messages).unwrap().len();

    let s = start(|_| {}).await;
    let (status, r) = s
        .post("/v1/chat/completions", &chat("Tell me a story", 12))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["model"], MODEL);
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected.as_str());
    assert_eq!(r["usage"]["prompt_tokens"], prompt_tokens);
    let completion = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion <= 12);
    if completion == 12 {
        assert_eq!(choice["finish_reason"], "length");
    }
    assert_eq!(
        r["usage"]["total_tokens"].as_u64().unwrap(),
        prompt_tokens as u64 + completion
    );

    // Streaming gives the same text, a role chunk first, a finish chunk, usage, [DONE].
    let mut body = chat("Tell me a story", 12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let lines = s.stream("/v1/chat/completions", &body).await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chat_stream_text(&lines, 0), expected);
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(
        finish[0]["choices"][0]["finish_reason"],
        choice["finish_reason"]
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], r["usage"]);
    s.shutdown().await;
}

#[tokio::test]
async fn stop_strings_cut_the_text_streaming_or_not() {
    let s = start(|_| {}).await;
    let (_, full) = s
        .post(
            "/v1/completions",
            &json!({
                "model": MODEL, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
            }),
        )
        .await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string taken from the middle of the greedy text.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    let body = json!({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
        "stop": [stop],
    });
    let (_, r) = s.post("/v1/completions", &body).await;
    assert_eq!(r["choices"][0]["text"], want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = s.stream("/v1/completions", &streamed).await;
    let text: String = lines
        .iter()
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(text, want);
    s.shutdown().await;
}

#[tokio::test]
async fn completions_take_text_or_token_ids_and_report_logprobs() {
    let args = deploy_args(&[]);
    let loaded = load(&args);
    let ids: Vec<u32> = loaded
        .model
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap()
        .get_ids()
        .to_vec();
    let s = start(|c| c.max_logprobs = 3).await;
    // Without the fixture's default repetition penalty, greedy picks the most likely token.
    let base = json!({
        "model": MODEL, "max_tokens": 6, "temperature": 0, "logprobs": 2,
        "repetition_penalty": 1.0,
    });
    let mut by_text = base.clone();
    by_text["prompt"] = json!("The capital of France is");
    let mut by_ids = base.clone();
    by_ids["prompt"] = json!(ids);
    let (status, a) = s.post("/v1/completions", &by_text).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/completions", &by_ids).await;
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(a["usage"]["prompt_tokens"], ids.len());
    let lp = &a["choices"][0]["logprobs"];
    let n = a["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    for (top, chosen) in lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(lp["token_logprobs"].as_array().unwrap())
    {
        let top = top.as_object().unwrap();
        assert!(top.len() <= 2 && !top.is_empty());
        // Greedy: the chosen token is the most likely one. (Alternatives are keyed by
        // text, so two byte tokens that both decode to U+FFFD keep one entry.)
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(chosen.as_f64().unwrap() >= best - 1e-5, "{top:?} {chosen}");
    }
    let mut too_many = by_text.clone();
    too_many["logprobs"] = json!(4);
    let (status, e) = s.post("/v1/completions", &too_many).await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("logprobs"))
    );

    // Chat logprobs: one entry per token with top alternatives.
    let mut c = chat("hello", 4);
    c["logprobs"] = json!(true);
    c["top_logprobs"] = json!(3);
    let (_, r) = s.post("/v1/chat/completions", &c).await;
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn n_choices_and_seeds_are_reproducible() {
    let s = start(|_| {}).await;
    let body = json!({
        "model": MODEL, "prompt": "Hello", "max_tokens": 10, "temperature": 1.0,
        "top_k": 0, "n": 3, "seed": 1234,
    });
    let (status, a) = s.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = s.post("/v1/completions", &body).await;
    let texts = |r: &Value| -> Vec<String> {
        r["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b), "same seed, same samples");
    let indices: Vec<u64> = a["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, vec![0, 1, 2]);
    let distinct: std::collections::HashSet<String> = texts(&a).into_iter().collect();
    assert!(
        distinct.len() > 1,
        "choices draw differently: {:?}",
        texts(&a)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let s = start(|c| c.max_body_bytes = 64 * 1024).await;
    let (status, e) = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(e["error"]["message"].as_str().unwrap().contains(MODEL));

    let long: Vec<u32> = vec![10; 300];
    let (status, e) = s
        .post("/v1/completions", &json!({"model": MODEL, "prompt": long}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    let (status, e) = s
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": 1000}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );

    let huge = vec![b'a'; 100 * 1024];
    let (status, e) = s.post_raw("/v1/completions", huge).await;
    assert_eq!(status, 413);
    assert_eq!(e["error"]["code"], "request_too_large");

    let (status, body) = s.get("/v2/nothing").await;
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"]["message"].is_string());
    let (status, body) = s.get("/v1/chat/completions").await;
    assert_eq!(status, 405, "{body}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = start(|c| {
        c.max_batch_size = 8;
        c.max_queue = 0;
    })
    .await;
    // More choices than the server ever holds at once is a 400, not an endless 429.
    let mut nine = chat("hi", 2);
    nine["n"] = json!(9);
    let (status, e) = s.post("/v1/chat/completions", &nine).await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("n")),
        "{e}"
    );
    // Eight long choices fill every place for hundreds of engine steps.
    let mut body = chat("Write a long story", 200);
    body["stream"] = json!(true);
    body["n"] = json!(8);
    let busy = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut busy = busy.bytes_stream();
    busy.next().await.unwrap().unwrap();
    let r = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&chat("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    drop(busy);
    // Once the stream is gone its slot frees and the server accepts work again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = s.post("/v1/chat/completions", &chat("hi", 2)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

/// Reads one metric's value from the exposition text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_is_cancelled_and_metrics_count_it() {
    let s = start(|_| {}).await;
    // Eight long choices keep the engine busy for hundreds of steps after the first chunk.
    let mut body = chat("Write a long story", 200);
    body["stream"] = json!(true);
    body["n"] = json!(8);
    let r = s
        .client
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = s.get("/metrics").await;
        if metric(&text, "kubeswift_serve_cancelled_requests_total") >= 1.0
            && metric(&text, "kubeswift_serve_batch_size") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = s.post("/v1/chat/completions", &chat("hi", 3)).await;
    assert_eq!(status, 200);
    let (_, text) = s.get("/metrics").await;
    assert!(
        metric(&text, "kubeswift_serve_generation_tokens_total") >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(
            "kubeswift_serve_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(metric(&text, "kubeswift_serve_time_to_first_token_seconds_count") >= 1.0);
    s.shutdown().await;
}
