//! Server-sent events for `stream: true`: one `data: {chunk}` per piece of generated text,
//! a chunk with the finish_reason per choice, a usage chunk when
//! `stream_options.include_usage` asks, then `data: [DONE]`.
//!
//! A task pumps the generation into the response body; when the client disconnects the
//! body is dropped, the pump's next send fails and it returns, dropping the generation's
//! receivers, which the engine loop notices and aborts.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::choices::{Generation, Piece, Usage};
use super::state::AppState;
use crate::infer::{FinishReason, TokenLogprob};

/// How a route shapes its chunks.
pub trait ChunkFormat: Send + 'static {
    /// A chunk sent before any text of choice `index` (chat's `role` delta).
    fn opening(&self, g: &Generation, index: usize) -> Option<Value>;
    fn text(
        &mut self,
        g: &Generation,
        index: usize,
        text: &str,
        logprobs: &[TokenLogprob],
    ) -> Value;
    fn finish(&mut self, g: &Generation, index: usize, reason: FinishReason) -> Value;
    fn usage(&mut self, g: &Generation, usage: Usage) -> Value;
}

/// The SSE response of a submitted generation.
pub fn respond(
    state: Arc<AppState>,
    mut generation: Generation,
    mut format: impl ChunkFormat,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(Event::default().data(v.to_string())).await.is_ok() }
        };
        for i in 0..generation.n {
            if let Some(chunk) = format.opening(&generation, i)
                && !send(chunk).await
            {
                return;
            }
        }
        while let Some(pieces) = generation.next(&state).await {
            let pieces = match pieces {
                Ok(p) => p,
                Err(e) => {
                    // Midway the status is already 200: the error travels as an event.
                    let _ = send(e.body()).await;
                    generation.log(&state);
                    return;
                }
            };
            for piece in pieces {
                let chunk = match piece {
                    Piece::Text {
                        index,
                        text,
                        logprobs,
                    } => format.text(&generation, index, &text, &logprobs),
                    Piece::Done { index, reason } => format.finish(&generation, index, reason),
                };
                if !send(chunk).await {
                    generation.log(&state);
                    return;
                }
            }
        }
        generation.log(&state);
        if include_usage && !send(format.usage(&generation, generation.usage())).await {
            return;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let body = stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok);
    Sse::new(body).keep_alive(KeepAlive::default())
}
