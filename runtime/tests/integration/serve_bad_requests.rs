//! A corpus of malformed and hostile requests: each gets a 4xx with an OpenAI-shaped error
//! body, and the server keeps serving afterwards.

use crate::serve_support;

use serde_json::{Value, json};
use serve_support::*;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// (route, body bytes, expected status).
fn corpus() -> Vec<(&'static str, Vec<u8>, u16)> {
    let j = |v: Value| v.to_string().into_bytes();
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": user("hi")});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        j(b)
    };
    let deep = format!(
        "{{\"model\": \"{MODEL}\", \"messages\": {}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    vec![
        (CHAT, b"".to_vec(), 400),
        (CHAT, b"{".to_vec(), 400),
        (CHAT, b"not json".to_vec(), 400),
        (CHAT, b"[]".to_vec(), 400),
        (CHAT, b"null".to_vec(), 400),
        (CHAT, b"{\"model\": \"\xff\xfe\"}".to_vec(), 400),
        (CHAT, deep.into_bytes(), 400),
        (CHAT, j(json!({"messages": user("hi")})), 400),
        (CHAT, j(json!({"model": MODEL})), 400),
        (CHAT, j(json!({"model": 7, "messages": user("hi")})), 400),
        (CHAT, j(json!({"model": "nope", "messages": user("hi")})), 404),
        (CHAT, chat(json!({"messages": []})), 400),
        (CHAT, chat(json!({"messages": "hi"})), 400),
        (CHAT, chat(json!({"messages": [1, 2]})), 400),
        (CHAT, chat(json!({"messages": [{"content": "no role"}]})), 400),
        (CHAT, chat(json!({"messages": [{"role": "wizard", "content": "x"}]})), 400),
        (CHAT, chat(json!({"messages": [{"role": "user", "content": 5}]})), 400),
        (CHAT, chat(json!({"messages": [{"role": "user"}]})), 400),
        (CHAT, chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})), 400),
        (CHAT, chat(json!({"max_tokens": -1})), 400),
        (CHAT, chat(json!({"max_tokens": 0})), 400),
        (CHAT, chat(json!({"max_tokens": "ten"})), 400),
        (CHAT, chat(json!({"max_tokens": 1e30})), 400),
        (CHAT, b"{\"model\": \"tiny-Qwen2.5\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 99999999999999999999999}".to_vec(), 400),
        (CHAT, b"{\"model\": \"tiny-Qwen2.5\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 1e999}".to_vec(), 400),
        (CHAT, chat(json!({"max_tokens": 100000})), 400),
        (CHAT, chat(json!({"temperature": -1})), 400),
        (CHAT, chat(json!({"temperature": "hot"})), 400),
        (CHAT, chat(json!({"top_p": 0})), 400),
        (CHAT, chat(json!({"top_p": 1.5})), 400),
        (CHAT, chat(json!({"top_k": -5})), 400),
        (CHAT, chat(json!({"repetition_penalty": 0})), 400),
        (CHAT, chat(json!({"n": 0})), 400),
        (CHAT, chat(json!({"n": 1000000})), 400),
        (CHAT, chat(json!({"stop": 3})), 400),
        (CHAT, chat(json!({"stop": ["a", null]})), 400),
        (CHAT, chat(json!({"stop": (0..100).map(|i| i.to_string()).collect::<Vec<_>>()})), 400),
        (CHAT, chat(json!({"stream": "true"})), 400),
        (CHAT, chat(json!({"stream_options": {"include_usage": true}})), 400),
        (CHAT, chat(json!({"stream": true, "stream_options": {"include_usage": "yes"}})), 400),
        (CHAT, chat(json!({"logprobs": true, "top_logprobs": 10000})), 400),
        (CHAT, chat(json!({"top_logprobs": 2})), 400),
        (CHAT, chat(json!({"seed": "abc"})), 400),
        (CHAT, chat(json!({"messages": user(&"word ".repeat(2000))})), 400),
        // Features that would otherwise be ignored, giving an answer not asked for.
        (CHAT, chat(json!({"logit_bias": {"5": 100}})), 400),
        (CHAT, chat(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})), 400),
        (CHAT, chat(json!({"response_format": {"type": "json_object"}})), 400),
        (COMPLETIONS, j(json!({"model": MODEL})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": 42})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": [-1, 5]})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": [4294967296u64]})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": [99999999]})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": []})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": ["a", "b"]})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": "x", "echo": true})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": "x", "logprobs": -1})), 400),
        (COMPLETIONS, j(json!({"model": MODEL, "prompt": "x", "best_of": 3})), 400),
        (COMPLETIONS, j(json!({"model": "other", "prompt": "x"})), 404),
        (COMPLETIONS, vec![b' '; 5 << 20], 413),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_a_4xx_and_the_server_keeps_serving() {
    let s = start(|_| {}).await;
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    for (i, (route, body, want)) in corpus.into_iter().enumerate() {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
        let (status, e) = s.post_raw(route, body).await;
        assert_eq!(status, want, "case {i} {route} {shown}: {e}");
        let err = &e["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {i}: {e}"
        );
        assert!(err["type"].is_string(), "case {i}: {e}");
        assert!(
            err.get("param").is_some() && err.get("code").is_some(),
            "case {i}: {e}"
        );
    }
    let (status, r) = s
        .post(
            CHAT,
            &json!({"model": MODEL, "messages": user("still there?"), "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(s.get("/health").await.0, 200);
    s.shutdown().await;
}

/// `--max_model_len` below the model's context is the limit requests are checked against:
/// a longer prompt, or one whose `max_tokens` would pass it, is a 400
/// `context_length_exceeded` before it reaches the engine (not a 500 from it, nor an answer
/// cut short at the limit).
#[tokio::test]
async fn max_model_len_is_the_context_requests_are_checked_against() {
    let s = start(|c| c.max_model_len = Some(40)).await;
    let long = "word ".repeat(60);
    for (route, body) in [
        (
            CHAT,
            json!({"model": MODEL, "messages": user(&long), "max_tokens": 2}),
        ),
        (
            COMPLETIONS,
            json!({"model": MODEL, "prompt": long, "max_tokens": 2}),
        ),
    ] {
        let (status, e) = s.post(route, &body).await;
        assert_eq!(status, 400, "{route}: {e}");
        assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("40 tokens (--max_model_len)"), "{message}");
    }
    let (status, e) = s
        .post(
            COMPLETIONS,
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": 40}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "max_tokens", "{e}");
    let (status, r) = s
        .post(
            COMPLETIONS,
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    s.shutdown().await;
}

/// A `Content-Length` over the limit is answered 413 at once, before any body arrives (a
/// client that declares 100 GB and sends one byte is not waited on).
#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(|_| {}).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {COMPLETIONS} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: 99999999999\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 512];
    // The bound is a guard against a hang, not a timing claim.
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read(&mut head))
        .await
        .expect("no answer while the declared body never came")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("request_too_large"), "{head}");
    s.shutdown().await;
}
