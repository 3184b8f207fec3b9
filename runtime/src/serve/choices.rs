//! One request's generations, from submission to finished choices: submits the `n`
//! choices, merges their event streams, applies stop strings, records latency metrics and
//! writes the request log line. The routes only shape the JSON.

use std::pin::Pin;
use std::time::Instant;

use futures::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::sampling::SamplingRequest;
use super::scheduler::{GenEvent, SubmitError};
use super::state::{AppState, Target};
use super::stop::StopFilter;
use crate::infer::{FinishReason, Request, TokenLogprob};

/// A submitted request: its generations and what its responses repeat.
pub struct Generation {
    /// `chatcmpl-...` / `cmpl-...`.
    pub id: String,
    pub created: u64,
    pub model: String,
    pub route: &'static str,
    pub started: Instant,
    pub prompt_tokens: usize,
    pub n: usize,
    events: Pin<Box<dyn Stream<Item = (usize, GenEvent)> + Send>>,
    tracker: Tracker,
}

/// Token counts of a request (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// What a generation produced next, after stop strings.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Text to show (may be empty when only logprobs are new).
    Text {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        index: usize,
        reason: FinishReason,
    },
}

/// A finished choice of a non-streaming response.
#[derive(Debug, Clone)]
pub struct Choice {
    pub index: usize,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Present when logprobs were requested.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

impl Generation {
    /// Submits `n` choices of `prompt` for the requested `model` name and what it resolved
    /// to (429 when the queue is full).
    pub fn start(
        state: &AppState,
        route: &'static str,
        id_prefix: &str,
        (model, target): (String, Target),
        prompt: Vec<u32>,
        sampling: &SamplingRequest,
    ) -> Result<Generation, ApiError> {
        if sampling.n > state.scheduler.capacity() {
            // It would be refused with 429 forever: say so instead.
            return Err(ApiError::invalid(
                "n",
                format!(
                    "'n' = {} exceeds what this server holds at once ({})",
                    sampling.n,
                    state.scheduler.capacity()
                ),
            ));
        }
        let seed = sampling.seed.unwrap_or_else(rand::random);
        let requests: Vec<Request> = (0..sampling.n)
            .map(|i| Request {
                prompt: prompt.clone(),
                params: sampling.params(&state.defaults, seed, i),
            })
            .collect();
        let stops = requests
            .first()
            .map(|r| r.params.stop_words.clone())
            .unwrap_or_default();
        let logprobs = sampling.logprobs.is_some();
        let receivers =
            state
                .scheduler
                .submit(requests, target.adapter())
                .map_err(|e| match e {
                    SubmitError::QueueFull(_) => {
                        state.metrics.rejected.inc();
                        ApiError::queue_full(1)
                    }
                    SubmitError::Stopped => ApiError::unavailable("The server is shutting down"),
                })?;
        Ok(Generation {
            id: format!("{id_prefix}-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model,
            route,
            started: Instant::now(),
            prompt_tokens: prompt.len(),
            n: sampling.n,
            events: merge(receivers),
            tracker: Tracker {
                filters: vec![StopFilter::new(&stops); sampling.n],
                logprobs_sent: vec![0; sampling.n],
                last: vec![None; sampling.n],
                first_token: None,
                logprobs,
                usage: Usage {
                    prompt_tokens: prompt.len(),
                    completion_tokens: 0,
                },
                reasons: vec![None; sampling.n],
            },
        })
    }

    /// The next pieces; `None` once every choice is done. A failed generation is an error.
    pub async fn next(&mut self, state: &AppState) -> Option<Result<Vec<Piece>, ApiError>> {
        if self.tracker.reasons.iter().all(Option::is_some) {
            return None;
        }
        let Some((index, event)) = self.events.next().await else {
            return Some(Err(ApiError::internal("the engine dropped a generation")));
        };
        Some(self.tracker.on(index, event, self.started, state))
    }

    /// Runs to completion (non-streaming responses).
    pub async fn collect(mut self, state: &AppState) -> Result<(Vec<Choice>, Usage), ApiError> {
        let mut choices: Vec<Choice> = (0..self.n)
            .map(|index| Choice {
                index,
                text: String::new(),
                finish_reason: FinishReason::Stop,
                logprobs: self.tracker.logprobs.then(Vec::new),
            })
            .collect();
        while let Some(pieces) = self.next(state).await {
            for piece in pieces? {
                match piece {
                    Piece::Text {
                        index,
                        text,
                        logprobs,
                    } => {
                        choices[index].text.push_str(&text);
                        if let Some(l) = &mut choices[index].logprobs {
                            l.extend(logprobs);
                        }
                    }
                    Piece::Done { index, reason } => choices[index].finish_reason = reason,
                }
            }
        }
        self.log(state);
        Ok((choices, self.tracker.usage))
    }

    pub fn usage(&self) -> Usage {
        self.tracker.usage
    }

    /// The structured request log line (`--verbose`), and the duration metric.
    pub fn log(&self, state: &AppState) {
        let took = self.started.elapsed();
        state.metrics.finished(took);
        if !state.config.verbose {
            return;
        }
        let reasons: Vec<&str> = self
            .tracker
            .reasons
            .iter()
            .map(|r| match r {
                Some(FinishReason::Stop) => "stop",
                Some(FinishReason::Length) => "length",
                None => "cancelled",
            })
            .collect();
        tracing::info!(
            target: "kubeswift::serve::request",
            request_id = %self.id,
            route = self.route,
            model = %self.model,
            n = self.n,
            prompt_tokens = self.tracker.usage.prompt_tokens,
            completion_tokens = self.tracker.usage.completion_tokens,
            finish_reason = %reasons.join(","),
            ttft_ms = self
                .tracker
                .first_token
                .map(|t| (t - self.started).as_secs_f64() * 1e3),
            duration_ms = took.as_secs_f64() * 1e3,
            "request finished"
        );
    }
}

/// Per-choice bookkeeping between engine events and pieces.
struct Tracker {
    filters: Vec<StopFilter>,
    logprobs_sent: Vec<usize>,
    last: Vec<Option<Instant>>,
    first_token: Option<Instant>,
    logprobs: bool,
    usage: Usage,
    reasons: Vec<Option<FinishReason>>,
}

impl Tracker {
    fn on(
        &mut self,
        index: usize,
        event: GenEvent,
        started: Instant,
        state: &AppState,
    ) -> Result<Vec<Piece>, ApiError> {
        match event {
            GenEvent::Delta { text, logprobs } => {
                let now = Instant::now();
                if self.first_token.is_none() {
                    self.first_token = Some(now);
                    state.metrics.first_token(now - started);
                }
                if let Some(last) = self.last[index] {
                    state.metrics.inter_token(now - last);
                }
                self.last[index] = Some(now);
                self.logprobs_sent[index] += logprobs.len();
                let text = self.filters[index].push(&text);
                Ok(if text.is_empty() && logprobs.is_empty() {
                    Vec::new()
                } else {
                    vec![Piece::Text {
                        index,
                        text,
                        logprobs,
                    }]
                })
            }
            GenEvent::Finished(out) => {
                let filter = &mut self.filters[index];
                // The engine's final text may hold what the streaming decoder kept back.
                let rest = out
                    .text
                    .strip_prefix(filter.pushed())
                    .unwrap_or_default()
                    .to_string();
                let mut text = filter.push(&rest);
                text.push_str(&filter.finish());
                let logprobs = out
                    .logprobs
                    .as_deref()
                    .and_then(|l| l.get(self.logprobs_sent[index]..))
                    .unwrap_or_default()
                    .to_vec();
                self.usage.completion_tokens += out.tokens.len();
                self.reasons[index] = Some(out.finish_reason);
                let mut pieces = Vec::new();
                if !text.is_empty() || !logprobs.is_empty() {
                    pieces.push(Piece::Text {
                        index,
                        text,
                        logprobs,
                    });
                }
                pieces.push(Piece::Done {
                    index,
                    reason: out.finish_reason,
                });
                Ok(pieces)
            }
            GenEvent::Failed(message) => Err(ApiError::internal(message)),
        }
    }
}

/// One stream of `(choice index, event)` over every choice's receiver.
fn merge(
    receivers: Vec<UnboundedReceiver<GenEvent>>,
) -> Pin<Box<dyn Stream<Item = (usize, GenEvent)> + Send>> {
    let streams = receivers.into_iter().enumerate().map(|(i, mut rx)| {
        stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(move |e| (i, e))
            .boxed()
    });
    stream::select_all(streams).boxed()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's `finish_reason` string.
pub fn reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}
