//! The small routes: `/health`, `/v1/models`, `/metrics`, the API-key check, the request
//! counter, and OpenAI-shaped answers for unknown paths and methods.

use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::state::AppState;

/// `GET /health`: 200 while the server runs (no key needed, for probes).
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

fn model_card(state: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": state.started,
        "owned_by": state.config.owned_by,
    })
}

/// `GET /v1/models`: the served model, then every named adapter (multi-LoRA).
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .model_names()
        .iter()
        .map(|id| model_card(&state, id))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`.
pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.resolve_model(&id) {
        Ok(_) => axum::Json(model_card(&state, &id)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Requires `Authorization: Bearer <api_key>` when the server has a key.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key
        && let Err(e) = check_key(request.headers(), key)
    {
        return e.into_response();
    }
    next.run(request).await
}

/// Answers 413 at once when a request's `Content-Length` says its body is over the limit,
/// instead of waiting for a body the server would refuse anyway (or that never comes).
pub async fn refuse_declared_oversize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if declared_length(request.headers()).is_some_and(|n| n > state.config.max_body_bytes as u64) {
        return ApiError::too_large(state.config.max_body_bytes).into_response();
    }
    next.run(request).await
}

/// The `Content-Length` a request declares, when it declares a valid one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The API-key decision, apart from HTTP plumbing.
pub fn check_key(headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "Missing API key: send 'Authorization: Bearer <api_key>'",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized("Incorrect API key provided")),
    }
}

/// Compares without an early exit, so timing does not reveal a key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answered request by route and status.
pub async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// Any path that is not a route.
pub async fn not_found(request: Request) -> Response {
    ApiError::no_route(request.method().as_str(), request.uri().path()).into_response()
}

/// A route called with a method it does not accept.
pub async fn method_not_allowed(request: Request) -> Response {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_are_checked_exactly() {
        let mut h = HeaderMap::new();
        assert!(check_key(&h, "secret").is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        assert!(check_key(&h, "secret").is_ok());
        for wrong in [
            "Bearer secre",
            "Bearer secrets",
            "secret",
            "Basic secret",
            "Bearer ",
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(wrong));
            let e = check_key(&h, "secret").unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::UNAUTHORIZED, "{wrong}");
        }
    }
}
