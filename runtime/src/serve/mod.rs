//! `swift deploy`: an OpenAI-compatible HTTP server over the generation engine.
//!
//! The HTTP layer (one file per route family: `chat_completion`, `completions`, `models`,
//! `sse`, `metrics`) validates requests and translates them; the `scheduler` runs the
//! engine on its own thread with continuous batching. `choices` is the pipeline between
//! them (stop strings, latency metrics, request logs).

pub mod adapters;
pub mod body;
pub mod chat_completion;
pub mod choices;
pub mod command;
pub mod completions;
pub mod config;
pub mod error;
pub mod logprobs;
pub mod memory;
pub mod metrics;
pub mod routes;
pub mod sampling;
pub mod scheduler;
pub mod server;
pub mod sse;
pub mod state;
pub mod stop;

pub use config::ServeConfig;
pub use error::ApiError;
pub use server::{RunningServer, ServeError, bind, start};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;

use sampling::Limits;
use state::AppState;

/// The body of a request, or the 413/400 its reading failed with.
fn body_bytes(body: Result<Bytes, BytesRejection>, state: &AppState) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.max_body_bytes)
        } else {
            ApiError::bad_body(format!(
                "The request body could not be read: {}",
                rejection.body_text()
            ))
        }
    })
}

fn limits(state: &AppState) -> Limits {
    Limits {
        max_n: state.config.max_n,
        max_logprobs: state.config.max_logprobs,
    }
}
