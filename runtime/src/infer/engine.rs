//! The generation engine: requests in, tokens and finished outputs out, one `step()` at a
//! time.
//!
//! Each request keeps its own state (KV-cache slots, generated tokens, random generator,
//! streaming decoder), so the batch is just "whatever is running": a step admits waiting
//! requests while slots are free (up to `max_batch_size` sequences), runs one forward over
//! the prompts of the newcomers and the last token of every running sequence together
//! (a ragged batch, no padding), and retires sequences that finished. Requests can join
//! and leave between any two steps, which is what continuous batching in the server needs.
//!
//! A sequence's context is its prompt followed by what it generated; every step feeds
//! each sequence the part of its context not in the cache yet, and samples once all of it
//! is. Decoding is the case of one token; the rest follows from that one rule:
//! - chunked prefill: a step feeds at most `max_step_tokens` prompt tokens (beside one
//!   token per decoding sequence), so a long prompt does not stall every stream;
//! - prefix caching: a newcomer whose prompt starts like an earlier one starts with those
//!   tokens already cached (`prefix_cache.rs`);
//! - the KV budget: the cache holds at most `kv_budget_tokens` tokens; with prefix caching
//!   a quarter of it is the prefix cache's (its entries are copies, so they cannot share
//!   memory with the running sequences as vLLM's blocks do), the rest the running
//!   sequences'. Admission waits while a newcomer does not fit; when decoding outgrows the
//!   budget, the newest requests are preempted: their slots are freed and they go back to
//!   the front of the queue with their state (tokens, random generator), and their
//!   context is prefilled again when they return, so their output does not change. A
//!   request that outgrows the budget alone ends with `finish_reason` length.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::detokenizer::{IncrementalDecoder, decode};
use super::error::{InferError, Result};
use super::prefix_cache::PrefixCache;
use super::sampler::{self, SamplingConfig};
use crate::model::{CausalLm, KvCache, LogitRows, SeqSpan, SlotId};
use crate::tuner::multi_lora::{AdapterId, RowRun, with_routing};

/// Identifies a request within one engine.
pub type RequestId = u64;

/// Per-request generation settings, resolved from arguments and generation_config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub sampling: SamplingConfig,
    /// `None`: until a stop token or the model's context is full.
    pub max_new_tokens: Option<usize>,
    /// Beam search when > 1 (deterministic; sampling settings other than the repetition
    /// penalty do not apply).
    pub num_beams: usize,
    /// Strings that end generation; they stay in the output.
    pub stop_words: Vec<String>,
    /// Tokens that end generation (eos, end of turn); they are removed from the output.
    pub stop_token_ids: Vec<u32>,
    pub logprobs: bool,
    pub top_logprobs: usize,
    pub seed: u64,
    /// Seeds the generator with `seed` alone, so a server request that names a seed draws
    /// the same whatever else runs; otherwise `seed + request id`, so the rows of one
    /// `swift infer` run draw differently.
    pub exact_seed: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            sampling: SamplingConfig::greedy(),
            max_new_tokens: None,
            num_beams: 1,
            stop_words: Vec::new(),
            stop_token_ids: Vec::new(),
            logprobs: false,
            top_logprobs: 0,
            seed: 42,
            exact_seed: false,
        }
    }
}

/// A prompt (token ids, template already applied) and how to continue it.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
}

/// Why a sequence stopped (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop word.
    Stop,
    /// `max_new_tokens` or the model's context.
    Length,
}

/// The log-probability of a generated token and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Output {
    pub id: RequestId,
    pub prompt_tokens: usize,
    /// Generated tokens, stop tokens removed.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Present when `logprobs` was requested (sampling/greedy only).
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// What a step produced.
#[derive(Debug, Clone)]
pub enum Event {
    /// New text of a running request (streaming); never splits a UTF-8 character.
    Delta {
        id: RequestId,
        text: String,
        /// The tokens this text completes, when `logprobs` was requested (else empty).
        logprobs: Vec<TokenLogprob>,
    },
    Finished(Output),
}

/// One sampled (or greedy) sequence.
struct SampleState {
    slot: SlotId,
    generated: Vec<u32>,
    rng: StdRng,
    decoder: IncrementalDecoder,
    /// Text released so far (for stop words).
    text: String,
    logprobs: Vec<TokenLogprob>,
    /// Entries of `logprobs` already reported with a delta.
    logprobs_released: usize,
}

/// One hypothesis of a beam search.
#[derive(Clone)]
struct Beam {
    slot: SlotId,
    generated: Vec<u32>,
    score: f64,
}

struct BeamState {
    beams: Vec<Beam>,
    /// Slots reserved for this request not held by a live beam.
    spare: Vec<SlotId>,
    finished: Vec<(f64, Vec<u32>)>,
}

enum State {
    Sample(Box<SampleState>),
    Beams(BeamState),
}

struct Running {
    id: RequestId,
    prompt: Vec<u32>,
    params: GenerationParams,
    /// The LoRA adapter its sequences run with (multi-LoRA serving); `None`: the base model.
    adapter: Option<AdapterId>,
    /// Most new tokens this request may produce (max_new_tokens and context).
    budget: usize,
    /// Its prompt was offered to the prefix cache.
    offered: bool,
    state: State,
}

/// A request waiting for the batch: new, or preempted with its state.
enum Waiting {
    New(RequestId, Request, Option<AdapterId>),
    Preempted(Running),
}

impl Waiting {
    fn id(&self) -> RequestId {
        match self {
            Waiting::New(id, _, _) => *id,
            Waiting::Preempted(r) => r.id,
        }
    }
}

/// How the engine batches and what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Most sequences decoded together.
    pub max_batch_size: usize,
    /// Most tokens the KV cache holds (running sequences and cached prefixes); `None`: no
    /// limit beyond each sequence's own context.
    pub kv_budget_tokens: Option<usize>,
    /// Most prompt tokens prefilled in one step (chunked prefill).
    pub max_step_tokens: usize,
    /// Keep prefilled prompts for later prompts that start the same way.
    pub prefix_caching: bool,
    /// Longest context a sequence may reach; `None`: the model's max_position_embeddings.
    pub max_model_len: Option<usize>,
}

impl EngineOptions {
    /// `swift infer`'s engine: whole prompts per step, no budget, no prefix cache.
    pub fn new(max_batch_size: usize) -> Self {
        EngineOptions {
            max_batch_size: max_batch_size.max(1),
            kv_budget_tokens: None,
            max_step_tokens: usize::MAX,
            prefix_caching: false,
            max_model_len: None,
        }
    }
}

/// Tokens a prefix cache holds when no KV budget bounds it.
const DEFAULT_PREFIX_TOKENS: usize = 8192;

/// The prefix cache's share of a KV budget.
const PREFIX_SHARE: usize = 4;

/// Counters since the engine started (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Prompt (and re-prefilled) tokens computed.
    pub prefill_tokens: u64,
    /// Prompt tokens copied from the prefix cache instead.
    pub prefix_hit_tokens: u64,
    /// Requests sent back to the queue to free KV memory.
    pub preemptions: u64,
}

/// The engine over one model; owns the KV cache.
pub struct Engine<'m> {
    model: &'m CausalLm,
    tokenizer: &'m Tokenizer,
    options: EngineOptions,
    cache: KvCache,
    prefixes: Option<PrefixCache>,
    waiting: VecDeque<Waiting>,
    running: Vec<Running>,
    next_id: RequestId,
    stats: EngineStats,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m CausalLm, tokenizer: &'m Tokenizer, max_batch_size: usize) -> Self {
        Self::with_options(model, tokenizer, EngineOptions::new(max_batch_size))
    }

    pub fn with_options(
        model: &'m CausalLm,
        tokenizer: &'m Tokenizer,
        options: EngineOptions,
    ) -> Self {
        let options = EngineOptions {
            max_batch_size: options.max_batch_size.max(1),
            max_step_tokens: options.max_step_tokens.max(1),
            ..options
        };
        let prefixes = options.prefix_caching.then(|| {
            PrefixCache::new(
                options
                    .kv_budget_tokens
                    .map_or(DEFAULT_PREFIX_TOKENS, |b| b / PREFIX_SHARE),
            )
        });
        Engine {
            model,
            tokenizer,
            options,
            cache: model.new_kv_cache(),
            prefixes,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            stats: EngineStats::default(),
        }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The running sequences' part of the KV budget (the prefix cache has its own).
    fn running_budget(&self) -> Option<usize> {
        let reserved = if self.options.prefix_caching {
            PREFIX_SHARE
        } else {
            0
        };
        self.options
            .kv_budget_tokens
            .map(|b| b - b.checked_div(reserved).unwrap_or(0))
    }

    /// The longest context a sequence may reach.
    fn context_limit(&self) -> usize {
        let model = self.model.config.max_position_embeddings;
        self.options.max_model_len.map_or(model, |m| m.min(model))
    }

    /// Queues a request; checks that its prompt fits the model's context.
    pub fn add_request(&mut self, request: Request) -> Result<RequestId> {
        self.add_request_for(request, None)
    }

    /// Queues a request that runs with `adapter` (an id of the model's multi-LoRA
    /// [`crate::tuner::multi_lora::AdapterSet`]); it shares the batch with requests for other
    /// adapters and for the base model.
    pub fn add_request_for(
        &mut self,
        request: Request,
        adapter: Option<AdapterId>,
    ) -> Result<RequestId> {
        let context = self.context_limit();
        if request.prompt.is_empty() {
            return Err(InferError::EmptyPrompt);
        }
        if request.prompt.len() >= context {
            let what = if self
                .options
                .max_model_len
                .is_some_and(|m| m < self.model.config.max_position_embeddings)
            {
                "the served context (--max_model_len)"
            } else {
                "the model's context (max_position_embeddings in config.json)"
            };
            return Err(InferError::PromptTooLong {
                prompt_tokens: request.prompt.len(),
                limit: context,
                what: what.into(),
            });
        }
        if let Some(budget) = self.running_budget() {
            // Every sequence of the request holds the prompt and one generated token.
            let need = (request.prompt.len() + 1) * request.params.num_beams.max(1);
            if need > budget {
                return Err(InferError::PromptTooLong {
                    prompt_tokens: request.prompt.len(),
                    limit: budget / request.params.num_beams.max(1) - 1,
                    what: "the KV cache budget (--gpu_memory_utilization)".into(),
                });
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiting::New(id, request, adapter));
        Ok(id)
    }

    /// True when nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Requests queued and not yet admitted to the batch.
    pub fn waiting_requests(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in the running batch.
    pub fn running_requests(&self) -> usize {
        self.running.len()
    }

    /// Tokens in the KV cache: running sequences and cached prefixes.
    pub fn kv_tokens(&self) -> usize {
        self.cache.cached_tokens() + self.prefixes.as_ref().map_or(0, PrefixCache::tokens)
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Drops a request wherever it is (its client went away) and frees its cache slots;
    /// no event is reported for it. False when the id is unknown or already finished.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|w| w.id() == id) {
            self.waiting.remove(i);
            return true;
        }
        let Some(i) = self.running.iter().position(|r| r.id == id) else {
            return false;
        };
        let r = self.running.remove(i);
        self.free_slots(&r);
        true
    }

    fn free_slots(&mut self, r: &Running) {
        match &r.state {
            State::Sample(s) => self.cache.free(s.slot),
            State::Beams(b) => {
                for &slot in b.beams.iter().map(|beam| &beam.slot).chain(&b.spare) {
                    self.cache.free(slot);
                }
            }
        }
    }

    /// Sequences decoded together right now.
    pub fn running_sequences(&self) -> usize {
        self.running.iter().map(Running::slots).sum()
    }

    /// Admits what fits, runs one forward, samples, and reports deltas and finished outputs.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.admit()?;
        let plan = loop {
            if self.running.is_empty() {
                return Ok(events);
            }
            let plan = self.plan()?;
            if self.fits(plan.tokens()) {
                break plan;
            }
            self.make_room(&mut events)?;
        };
        let (tokens, spans, routing) = self.feed(&plan);
        self.stats.prefill_tokens += plan.prefill_tokens() as u64;
        let (model, cache) = (self.model, &mut self.cache);
        let logits = with_routing(&routing, || {
            model.forward_infer(&tokens, &spans, cache, LogitRows::Last)
        })?;
        let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(crate::model::ModelError::from)?;
        let mut rows = logits.into_iter();
        let mut still_running = Vec::with_capacity(self.running.len());
        for (mut r, takes) in std::mem::take(&mut self.running)
            .into_iter()
            .zip(&plan.takes)
        {
            let fed = takes.iter().filter(|t| t.len > 0).count();
            let mut mine: Vec<Vec<f32>> = rows.by_ref().take(fed).collect();
            if mine.len() != fed {
                return Err(InferError::Internal("missing logits row".into()));
            }
            self.offer_prefix(&mut r)?;
            // Not every sequence has all of its context cached yet (chunked prefill).
            if fed == 0 || takes.iter().any(|t| !t.completes) {
                still_running.push(r);
                continue;
            }
            let done = match &mut r.state {
                State::Sample(s) => sample_step(
                    s,
                    mine.pop().unwrap_or_default(),
                    &r.prompt,
                    &r.params,
                    r.budget,
                    self.tokenizer,
                    r.id,
                    &mut events,
                ),
                State::Beams(b) => {
                    beam_step(b, mine, &r.prompt, &r.params, r.budget, &mut self.cache)?
                }
            };
            match done {
                Some(reason) => events.push(Event::Finished(self.finish(r, reason))),
                None => still_running.push(r),
            }
        }
        self.running = still_running;
        Ok(events)
    }

    /// Runs requests to completion, calling `on_event` for every event; outputs come back
    /// in request order.
    pub fn generate(
        &mut self,
        requests: Vec<Request>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Vec<Output>> {
        self.generate_indexed(requests, |event, _| on_event(event))
    }

    /// [`Self::generate`] whose callback also gets, for a finished request, its index in
    /// `requests` (requests finish in any order; a caller writing results as they come
    /// uses it to keep the input's order).
    pub fn generate_indexed(
        &mut self,
        requests: Vec<Request>,
        mut on_event: impl FnMut(&Event, Option<usize>),
    ) -> Result<Vec<Output>> {
        let ids: Vec<RequestId> = requests
            .into_iter()
            .map(|r| self.add_request(r))
            .collect::<Result<_>>()?;
        let mut outputs: Vec<Option<Output>> = vec![None; ids.len()];
        while !self.is_idle() {
            for event in self.step()? {
                let index = match &event {
                    Event::Finished(out) => ids.iter().position(|&id| id == out.id),
                    Event::Delta { .. } => None,
                };
                on_event(&event, index);
                if let (Event::Finished(out), Some(i)) = (event, index) {
                    outputs[i] = Some(out);
                }
            }
        }
        outputs
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| InferError::Internal("request finished without output".into()))
            })
            .collect()
    }

    /// Whether the running sequences may grow by `growth` tokens.
    fn fits(&self, growth: usize) -> bool {
        self.running_budget()
            .is_none_or(|budget| self.cache.cached_tokens() + growth <= budget)
    }

    /// Frees KV memory for the step: the newest request goes back to the queue; a request
    /// alone over the budget ends (length).
    fn make_room(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let newest = |sample_only: bool| {
            self.running
                .iter()
                .enumerate()
                .filter(|(_, r)| !sample_only || matches!(r.state, State::Sample(_)))
                .max_by_key(|(_, r)| r.id)
                .map(|(i, _)| i)
        };
        // Beam searches are not preempted (their beams would have to be fed again in
        // lockstep), and a request alone has nobody to make room for it.
        let victim = (self.running.len() > 1).then(|| newest(true)).flatten();
        let Some(i) = victim else {
            let Some(i) = newest(false) else {
                return Ok(());
            };
            let r = self.running.remove(i);
            tracing::debug!(request = r.id, "KV budget reached: request ends (length)");
            events.push(Event::Finished(self.finish(r, FinishReason::Length)));
            return Ok(());
        };
        let r = self.running.remove(i);
        tracing::debug!(request = r.id, "KV budget reached: request preempted");
        self.free_slots(&r);
        self.stats.preemptions += 1;
        self.waiting.push_front(Waiting::Preempted(r));
        Ok(())
    }

    /// Tokens the running sequences still have to feed (their uncached context).
    fn pending_tokens(&self) -> Result<usize> {
        let mut n = 0;
        for r in &self.running {
            for (slot, generated) in r.seqs() {
                n += (r.prompt.len() + generated.len()).saturating_sub(self.cache.len(slot)?);
            }
        }
        Ok(n)
    }

    fn admit(&mut self) -> Result<()> {
        while let Some(front) = self.waiting.front() {
            let (need, context) = match front {
                Waiting::New(_, request, _) => {
                    (request.params.num_beams.max(1), request.prompt.len())
                }
                Waiting::Preempted(r) => (
                    r.slots(),
                    r.seqs()
                        .iter()
                        .map(|(_, g)| r.prompt.len() + g.len())
                        .sum::<usize>(),
                ),
            };
            let used = self.running_sequences();
            if used > 0 && used + need > self.options.max_batch_size {
                break;
            }
            if !self.running.is_empty()
                && let Some(budget) = self.running_budget()
            {
                // What is cached, what the others still prefill, one token per running
                // sequence, and the newcomer's context.
                let committed = self.cache.cached_tokens()
                    + self.pending_tokens()?
                    + self.running_sequences()
                    + context;
                if committed > budget {
                    break;
                }
            }
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            let running = match waiting {
                Waiting::New(id, request, adapter) => self.start(id, request, adapter),
                Waiting::Preempted(r) => self.resume(r),
            };
            let mut running = running;
            self.reuse_prefix(&mut running)?;
            self.running.push(running);
        }
        Ok(())
    }

    fn capacity(&self, r: &Running) -> usize {
        // The last generated token is never fed back, so prompt + budget - 1 positions suffice.
        r.prompt.len() + r.budget.max(1)
    }

    fn start(&mut self, id: RequestId, request: Request, adapter: Option<AdapterId>) -> Running {
        let context = self.context_limit();
        let room = context - request.prompt.len();
        let budget = request.params.max_new_tokens.map_or(room, |m| m.min(room));
        let capacity = request.prompt.len() + budget.max(1);
        let params = request.params;
        let state = if params.num_beams > 1 {
            let slots: Vec<SlotId> = (0..params.num_beams)
                .map(|_| self.cache.allocate(capacity))
                .collect();
            State::Beams(BeamState {
                beams: vec![Beam {
                    slot: slots[0],
                    generated: Vec::new(),
                    score: 0.0,
                }],
                spare: slots[1..].to_vec(),
                finished: Vec::new(),
            })
        } else {
            State::Sample(Box::new(SampleState {
                slot: self.cache.allocate(capacity),
                generated: Vec::new(),
                rng: StdRng::seed_from_u64(if params.exact_seed {
                    params.seed
                } else {
                    params.seed.wrapping_add(id)
                }),
                decoder: IncrementalDecoder::new(),
                text: String::new(),
                logprobs: Vec::new(),
                logprobs_released: 0,
            }))
        };
        Running {
            id,
            prompt: request.prompt,
            params,
            adapter,
            budget,
            offered: false,
            state,
        }
    }

    /// A preempted request gets fresh slots; its whole context is fed again.
    fn resume(&mut self, mut r: Running) -> Running {
        let capacity = self.capacity(&r);
        match &mut r.state {
            State::Sample(s) => s.slot = self.cache.allocate(capacity),
            State::Beams(b) => {
                for beam in &mut b.beams {
                    beam.slot = self.cache.allocate(capacity);
                }
                for slot in &mut b.spare {
                    *slot = self.cache.allocate(capacity);
                }
            }
        }
        r
    }

    /// Starts a newcomer's (first) sequence from the longest cached prefix of its context.
    fn reuse_prefix(&mut self, r: &mut Running) -> Result<()> {
        let Some(prefixes) = self.prefixes.as_mut() else {
            return Ok(());
        };
        let (slot, context) = match &r.state {
            State::Sample(s) => (s.slot, [r.prompt.as_slice(), &s.generated].concat()),
            State::Beams(b) if b.beams.len() == 1 && b.beams[0].generated.is_empty() => {
                (b.beams[0].slot, r.prompt.clone())
            }
            State::Beams(_) => return Ok(()),
        };
        let Some(hit) = prefixes.lookup(r.adapter, &context) else {
            return Ok(());
        };
        let cache = &mut self.cache;
        prefixes.apply(hit, |snapshot, len| cache.restore(slot, snapshot, len))?;
        self.stats.prefix_hit_tokens += hit.len as u64;
        Ok(())
    }

    /// Once a request's prompt is all cached, offers it to the prefix cache.
    fn offer_prefix(&mut self, r: &mut Running) -> Result<()> {
        if r.offered {
            return Ok(());
        }
        let Some(prefixes) = self.prefixes.as_mut() else {
            return Ok(());
        };
        let slot = match &r.state {
            State::Sample(s) => s.slot,
            State::Beams(b) => b.beams[0].slot,
        };
        if self.cache.len(slot)? < r.prompt.len() {
            return Ok(());
        }
        r.offered = true;
        let cache = &self.cache;
        prefixes.offer(r.adapter, &r.prompt, |len| cache.snapshot(slot, len))?;
        Ok(())
    }

    /// How many tokens each running sequence feeds this step.
    fn plan(&self) -> Result<StepPlan> {
        let mut uncached = Vec::new();
        for r in &self.running {
            let mut mine = Vec::new();
            for (slot, generated) in r.seqs() {
                let context = r.prompt.len() + generated.len();
                let cached = self.cache.len(slot)?;
                if cached >= context {
                    return Err(InferError::Internal(format!(
                        "request {}: nothing left to feed ({cached} of {context} tokens cached)",
                        r.id
                    )));
                }
                mine.push((cached, context - cached));
            }
            uncached.push(mine);
        }
        Ok(StepPlan::new(&uncached, self.options.max_step_tokens))
    }

    /// The tokens and spans of the plan, and the adapter of each span's rows.
    fn feed(&self, plan: &StepPlan) -> (Vec<u32>, Vec<SeqSpan>, Vec<RowRun>) {
        let mut tokens = Vec::new();
        let mut spans: Vec<SeqSpan> = Vec::new();
        let mut routing = Vec::new();
        for (r, takes) in self.running.iter().zip(&plan.takes) {
            for ((slot, generated), take) in r.seqs().into_iter().zip(takes) {
                if take.len == 0 {
                    continue;
                }
                let context = r.prompt.iter().chain(generated);
                tokens.extend(context.skip(take.start).take(take.len));
                spans.push(SeqSpan {
                    slot,
                    start: take.start,
                    len: take.len,
                });
                routing.push(RowRun {
                    rows: take.len,
                    adapter: r.adapter,
                });
            }
        }
        (tokens, spans, routing)
    }

    fn finish(&mut self, r: Running, reason: FinishReason) -> Output {
        self.free_slots(&r);
        match r.state {
            State::Sample(mut s) => {
                let _ = s.decoder.flush(self.tokenizer);
                Output {
                    id: r.id,
                    prompt_tokens: r.prompt.len(),
                    text: decode(self.tokenizer, &s.generated),
                    tokens: s.generated,
                    finish_reason: reason,
                    logprobs: r.params.logprobs.then_some(s.logprobs),
                }
            }
            State::Beams(mut b) => {
                if b.finished.is_empty() {
                    // Ended early (KV budget): the live beams are the hypotheses.
                    for beam in &b.beams {
                        let len = beam.generated.len().max(1) as f64;
                        b.finished.push((beam.score / len, beam.generated.clone()));
                    }
                }
                let best = b
                    .finished
                    .iter()
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                Output {
                    id: r.id,
                    prompt_tokens: r.prompt.len(),
                    text: decode(self.tokenizer, &best),
                    tokens: best,
                    finish_reason: reason,
                    logprobs: None,
                }
            }
        }
    }
}

impl Running {
    fn slots(&self) -> usize {
        match &self.state {
            State::Sample(_) => 1,
            State::Beams(b) => b.beams.len() + b.spare.len(),
        }
    }

    /// The slot and generated tokens of each live sequence.
    fn seqs(&self) -> Vec<(SlotId, &[u32])> {
        match &self.state {
            State::Sample(s) => vec![(s.slot, s.generated.as_slice())],
            State::Beams(b) => b
                .beams
                .iter()
                .map(|beam| (beam.slot, beam.generated.as_slice()))
                .collect(),
        }
    }
}

/// What one sequence feeds in a step: context tokens `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Take {
    start: usize,
    len: usize,
    /// After this step the whole context is cached (the step samples from its logits).
    completes: bool,
    /// More than one token was uncached (a prompt, not a decode).
    prefill: bool,
}

/// The feeds of one step, per running request and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StepPlan {
    takes: Vec<Vec<Take>>,
}

impl StepPlan {
    /// `uncached[r][s]` is (cached, uncached) of sequence s of request r. Every decoding
    /// sequence (one token to feed) feeds it; prompts share `max_step_tokens` minus those,
    /// in order, whole or in part; at least one prompt moves each step.
    fn new(uncached: &[Vec<(usize, usize)>], max_step_tokens: usize) -> Self {
        let decodes: usize = uncached.iter().flatten().filter(|(_, u)| *u == 1).count();
        let mut left = max_step_tokens.saturating_sub(decodes);
        let mut moved = decodes > 0;
        let takes = uncached
            .iter()
            .map(|seqs| {
                seqs.iter()
                    .map(|&(cached, n)| {
                        let len = if n <= 1 {
                            n
                        } else {
                            let mut len = n.min(left);
                            if len == 0 && !moved {
                                len = n.min(max_step_tokens.max(1));
                            }
                            left = left.saturating_sub(len);
                            len
                        };
                        moved |= len > 0;
                        Take {
                            start: cached,
                            len,
                            completes: len == n,
                            prefill: n > 1,
                        }
                    })
                    .collect()
            })
            .collect();
        StepPlan { takes }
    }

    fn tokens(&self) -> usize {
        self.takes.iter().flatten().map(|t| t.len).sum()
    }

    /// Tokens fed for sequences with more than one to feed (prompts, re-prefills).
    fn prefill_tokens(&self) -> usize {
        self.takes
            .iter()
            .flatten()
            .filter(|t| t.prefill)
            .map(|t| t.len)
            .sum()
    }
}

/// Samples one token for a sequence; returns why it stopped, if it did.
#[allow(clippy::too_many_arguments)]
fn sample_step(
    s: &mut SampleState,
    mut logits: Vec<f32>,
    prompt: &[u32],
    params: &GenerationParams,
    budget: usize,
    tokenizer: &Tokenizer,
    id: RequestId,
    events: &mut Vec<Event>,
) -> Option<FinishReason> {
    let raw_logprobs = params.logprobs.then(|| sampler::log_softmax(&logits));
    let seen: Vec<u32> = if params.sampling.repetition_penalty != 1.0 {
        prompt.iter().chain(&s.generated).copied().collect()
    } else {
        Vec::new()
    };
    let token = sampler::sample(&mut logits, &seen, &params.sampling, &mut s.rng);
    if params.stop_token_ids.contains(&token) {
        return Some(FinishReason::Stop);
    }
    s.generated.push(token);
    if let Some(lp) = raw_logprobs {
        s.logprobs.push(TokenLogprob {
            token,
            logprob: lp[token as usize],
            top: sampler::top_k_of(&lp, params.top_logprobs),
        });
    }
    let delta = s.decoder.push(tokenizer, token);
    if !delta.is_empty() {
        let tail_start = s.text.len().saturating_sub(max_stop_word_len(params));
        s.text.push_str(&delta);
        let logprobs = s.logprobs[s.logprobs_released..].to_vec();
        s.logprobs_released = s.logprobs.len();
        events.push(Event::Delta {
            id,
            text: delta,
            logprobs,
        });
        let tail = s
            .text
            .get(floor_char_boundary(&s.text, tail_start)..)
            .unwrap_or_default();
        if params
            .stop_words
            .iter()
            .any(|w| !w.is_empty() && tail.contains(w.as_str()))
        {
            return Some(FinishReason::Stop);
        }
    }
    (s.generated.len() >= budget).then_some(FinishReason::Length)
}

fn max_stop_word_len(params: &GenerationParams) -> usize {
    params.stop_words.iter().map(String::len).max().unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One beam-search step (transformers' algorithm with `early_stopping=False` and
/// `length_penalty=1.0`): extend every live beam, keep the best `num_beams` continuations,
/// set finished hypotheses aside.
fn beam_step(
    b: &mut BeamState,
    rows: Vec<Vec<f32>>,
    prompt: &[u32],
    params: &GenerationParams,
    budget: usize,
    cache: &mut KvCache,
) -> Result<Option<FinishReason>> {
    let n = params.num_beams;
    let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
    for (i, (beam, mut logits)) in b.beams.iter().zip(rows).enumerate() {
        if params.sampling.repetition_penalty != 1.0 {
            let seen: Vec<u32> = prompt.iter().chain(&beam.generated).copied().collect();
            sampler::apply_repetition_penalty(
                &mut logits,
                &seen,
                params.sampling.repetition_penalty,
            );
        }
        let lp = sampler::log_softmax(&logits);
        for (token, l) in sampler::top_k_of(&lp, 2 * n) {
            candidates.push((beam.score + l as f64, i, token));
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut next: Vec<(usize, u32, f64)> = Vec::with_capacity(n);
    for (rank, &(score, parent, token)) in candidates.iter().enumerate() {
        if params.stop_token_ids.contains(&token) {
            if rank < n {
                let generated = b.beams[parent].generated.clone();
                let len = (generated.len() + 1) as f64;
                b.finished.push((score / len, generated));
            }
            continue;
        }
        next.push((parent, token, score));
        if next.len() == n {
            break;
        }
    }
    let generated_len = b.beams[0].generated.len() + 1;
    let at_budget = generated_len >= budget;
    // Done when n hypotheses are finished and no live beam can still beat the worst.
    if b.finished.len() >= n {
        let worst = b.finished.iter().map(|f| f.0).fold(f64::INFINITY, f64::min);
        let best_live = next
            .first()
            .map_or(f64::NEG_INFINITY, |c| c.2 / generated_len as f64);
        if worst >= best_live {
            return Ok(Some(FinishReason::Stop));
        }
    }
    // Reassign slots: the first child of a parent keeps its cache, others get a copy.
    let old = std::mem::take(&mut b.beams);
    let mut kept = vec![false; old.len()];
    for &(parent, _, _) in &next {
        kept[parent] = true;
    }
    for (i, beam) in old.iter().enumerate() {
        if !kept[i] {
            b.spare.push(beam.slot);
        }
    }
    let mut parent_taken = vec![false; old.len()];
    for (parent, token, score) in next {
        let p = &old[parent];
        let slot = if !parent_taken[parent] {
            parent_taken[parent] = true;
            p.slot
        } else {
            let slot = b
                .spare
                .pop()
                .ok_or_else(|| InferError::Internal("beam search ran out of slots".into()))?;
            let len = cache.len(p.slot)?;
            cache.copy_prefix(p.slot, slot, len)?;
            slot
        };
        let mut generated = p.generated.clone();
        generated.push(token);
        b.beams.push(Beam {
            slot,
            generated,
            score,
        });
    }
    if at_budget || b.beams.is_empty() {
        for beam in &b.beams {
            b.finished.push((
                beam.score / beam.generated.len() as f64,
                beam.generated.clone(),
            ));
        }
        return Ok(Some(FinishReason::Length));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(plan: &StepPlan) -> Vec<Vec<usize>> {
        plan.takes
            .iter()
            .map(|t| t.iter().map(|t| t.len).collect())
            .collect()
    }

    #[test]
    fn decodes_always_feed_and_prompts_share_the_rest_of_the_step() {
        // Two decoding sequences, then prompts of 300 and 400 uncached tokens.
        let uncached = vec![vec![(10, 1)], vec![(0, 300)], vec![(7, 1)], vec![(0, 400)]];
        let plan = StepPlan::new(&uncached, 512);
        assert_eq!(lens(&plan), vec![vec![1], vec![300], vec![1], vec![210]]);
        assert_eq!(plan.tokens(), 512);
        assert_eq!(plan.prefill_tokens(), 510);
        let last = plan.takes[3][0];
        assert_eq!(
            (last.start, last.completes),
            (0, false),
            "a chunk, no sample"
        );
        assert!(plan.takes[1][0].completes && plan.takes[0][0].completes);
        // Unlimited: whole prompts (swift infer).
        let all = StepPlan::new(&uncached, usize::MAX);
        assert_eq!(lens(&all), vec![vec![1], vec![300], vec![1], vec![400]]);
    }

    #[test]
    fn a_chunk_continues_where_the_cache_ends_and_a_prompt_always_moves() {
        let plan = StepPlan::new(&[vec![(256, 300)]], 256);
        assert_eq!(plan.takes[0][0].start, 256);
        assert_eq!(lens(&plan), vec![vec![256]]);
        // More decodes than the step allows: they all feed, and the prompt waits.
        let crowded: Vec<Vec<(usize, usize)>> = (0..4)
            .map(|_| vec![(5, 1)])
            .chain([vec![(0, 50)]])
            .collect();
        let plan = StepPlan::new(&crowded, 2);
        assert_eq!(
            lens(&plan),
            vec![vec![1], vec![1], vec![1], vec![1], vec![0]]
        );
        // Nothing decoding: the first prompt moves even when the step is tiny.
        let plan = StepPlan::new(&[vec![(0, 50)], vec![(0, 60)]], 8);
        assert_eq!(lens(&plan), vec![vec![8], vec![0]]);
    }

    #[test]
    fn beam_sequences_each_feed_one_token() {
        let plan = StepPlan::new(&[vec![(9, 1), (9, 1), (9, 1)]], 2);
        assert_eq!(lens(&plan), vec![vec![1, 1, 1]]);
        assert!(plan.takes[0].iter().all(|t| t.completes));
    }
}
