//! The engine loop behind the server: one thread owns the generation engine and runs
//! `step()` while anything is queued or running. Requests join the running batch at the
//! next step and leave when they finish (continuous batching); a request whose client went
//! away (its event receiver dropped) is aborted before the next step, freeing its slot.
//!
//! Back-pressure is a bound on generations in flight (running + waiting): beyond it
//! `submit` refuses at once, and the HTTP layer answers 429 with Retry-After, instead of
//! queueing without limit and running out of memory.
//!
//! Multi-LoRA: a generation carries the id of its adapter, which the engine applies to
//! its sequences' rows; generations for different adapters share the batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::metrics::Metrics;
use crate::infer::{
    Engine, EngineOptions, EngineStats, Event, Output, Request, RequestId, TokenLogprob,
};
use crate::model::Pretrained;
use crate::tuner::multi_lora::AdapterId;

/// What a generation reports to its HTTP handler, in order.
#[derive(Debug, Clone)]
pub enum GenEvent {
    /// New text and, when requested, the logprobs of the tokens it completes.
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished(Output),
    /// The engine failed; the message is safe to show (it names no other request).
    Failed(String),
}

/// Why a generation was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({0} generations in flight)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
}

enum Command {
    Submit {
        request: Request,
        adapter: Option<AdapterId>,
        events: UnboundedSender<GenEvent>,
    },
}

/// Generations counted against the bound, released by the loop when they end.
struct InFlight {
    count: AtomicUsize,
    capacity: usize,
}

impl InFlight {
    /// Reserves `n` places, all or none.
    fn reserve(&self, n: usize) -> Result<(), SubmitError> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c.saturating_add(n) <= self.capacity).then_some(c + n)
            })
            .map(|_| ())
            .map_err(SubmitError::QueueFull)
    }

    fn release(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A cloneable handle for submitting generations; the loop ends when every handle is
/// dropped and the last generation finished (that is how draining on shutdown works).
#[derive(Clone)]
pub struct Scheduler {
    commands: mpsc::Sender<Command>,
    in_flight: Arc<InFlight>,
}

impl Scheduler {
    /// Starts the engine loop over `model` with room for `options.max_batch_size` running
    /// and `max_queue` waiting generations.
    pub fn start(
        model: Arc<Pretrained>,
        options: EngineOptions,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Scheduler, JoinHandle<()>)> {
        let max_batch_size = options.max_batch_size;
        let (commands, rx) = mpsc::channel();
        let in_flight = Arc::new(InFlight {
            count: AtomicUsize::new(0),
            capacity: max_batch_size.max(1).saturating_add(max_queue),
        });
        let loop_in_flight = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("swift-engine".into())
            .spawn(move || {
                let engine = Engine::with_options(&model.model, &model.tokenizer, options);
                metrics
                    .kv_budget_tokens
                    .set(options.kv_budget_tokens.unwrap_or(0) as i64);
                EngineLoop {
                    engine,
                    model: &model,
                    options,
                    reported: EngineStats::default(),
                    active: HashMap::new(),
                    in_flight: loop_in_flight,
                    metrics,
                }
                .run(rx)
            })?;
        Ok((
            Scheduler {
                commands,
                in_flight,
            },
            thread,
        ))
    }

    /// Queues generations that must run together (the `n` choices of one request), with
    /// `adapter` or the base model: all are accepted or none. Each gets its own ordered
    /// event stream.
    pub fn submit(
        &self,
        requests: Vec<Request>,
        adapter: Option<AdapterId>,
    ) -> Result<Vec<UnboundedReceiver<GenEvent>>, SubmitError> {
        let n = requests.len();
        self.in_flight.reserve(n)?;
        let mut receivers = Vec::with_capacity(n);
        for (sent, request) in requests.into_iter().enumerate() {
            let (events, rx) = unbounded_channel();
            if self
                .commands
                .send(Command::Submit {
                    request,
                    adapter,
                    events,
                })
                .is_err()
            {
                // The loop is gone: nothing it will release for the unsent ones.
                self.in_flight.release(n - sent);
                return Err(SubmitError::Stopped);
            }
            receivers.push(rx);
        }
        Ok(receivers)
    }

    /// Most generations in flight at once.
    pub fn capacity(&self) -> usize {
        self.in_flight.capacity
    }

    /// Generations running or waiting.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count.load(Ordering::Acquire)
    }
}

struct EngineLoop<'m> {
    engine: Engine<'m>,
    model: &'m Pretrained,
    options: EngineOptions,
    /// The engine's counters as last copied into the metrics.
    reported: EngineStats,
    active: HashMap<RequestId, UnboundedSender<GenEvent>>,
    in_flight: Arc<InFlight>,
    metrics: Arc<Metrics>,
}

impl EngineLoop<'_> {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if self.engine.is_idle() {
                // Nothing to step: sleep until work arrives or every handle is gone.
                match commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            while let Ok(c) = commands.try_recv() {
                self.handle(c);
            }
            self.abort_abandoned();
            self.metrics
                .queue_depth
                .set(self.engine.waiting_requests() as i64);
            if self.engine.is_idle() {
                self.metrics.batch_size.set(0);
                continue;
            }
            self.metrics.step(self.engine.running_sequences());
            let stepped = self.engine.step();
            self.report_engine();
            match stepped {
                Ok(events) => {
                    self.metrics
                        .batch_size
                        .set(self.engine.running_requests() as i64);
                    for event in events {
                        self.dispatch(event);
                    }
                }
                Err(e) => self.fail_all(&e.to_string()),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                request,
                adapter,
                events,
            } => match self.engine.add_request_for(request, adapter) {
                Ok(id) => {
                    self.active.insert(id, events);
                }
                Err(e) => {
                    let _ = events.send(GenEvent::Failed(e.to_string()));
                    self.in_flight.release(1);
                }
            },
        }
    }

    /// Copies the engine's KV fill and counters into the metrics.
    fn report_engine(&mut self) {
        let now = self.engine.stats();
        let m = &self.metrics;
        m.kv_cache_tokens.set(self.engine.kv_tokens() as i64);
        m.prefill_tokens
            .inc_by(now.prefill_tokens - self.reported.prefill_tokens);
        m.prefix_hit_tokens
            .inc_by(now.prefix_hit_tokens - self.reported.prefix_hit_tokens);
        m.preemptions
            .inc_by(now.preemptions - self.reported.preemptions);
        self.reported = now;
    }

    /// Drops generations whose client disconnected, so they stop using the batch.
    fn abort_abandoned(&mut self) {
        let gone: Vec<RequestId> = self
            .active
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.engine.abort(id);
            self.active.remove(&id);
            self.in_flight.release(1);
            self.metrics.cancelled.inc();
            tracing::debug!(generation = id, "client went away; generation aborted");
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Delta { id, text, logprobs } => {
                if let Some(tx) = self.active.get(&id) {
                    // A send error means the client left; the next pass aborts it.
                    let _ = tx.send(GenEvent::Delta { text, logprobs });
                }
            }
            Event::Finished(out) => {
                if let Some(tx) = self.active.remove(&out.id) {
                    self.metrics.prompt_tokens.inc_by(out.prompt_tokens as u64);
                    self.metrics
                        .generation_tokens
                        .inc_by(out.tokens.len() as u64);
                    let _ = tx.send(GenEvent::Finished(out));
                    self.in_flight.release(1);
                }
            }
        }
    }

    /// A failed step leaves the batch in an unknown state: every generation in it fails
    /// and the loop continues with a fresh engine (the model is untouched).
    fn fail_all(&mut self, message: &str) {
        tracing::error!(error = message, "generation step failed");
        for (_, tx) in self.active.drain() {
            let _ = tx.send(GenEvent::Failed(format!("generation failed: {message}")));
            self.in_flight.release(1);
        }
        self.engine = Engine::with_options(&self.model.model, &self.model.tokenizer, self.options);
        self.reported = EngineStats::default();
    }
}
