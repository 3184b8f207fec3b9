//! The generation engine: requests in, tokens and finished outputs out, one `step()` at a
//! time.
//!
//! Each request keeps its own state (KV-cache slots, generated tokens, random generator,
//! streaming decoder), so the batch is just "whatever is running": a step admits waiting
//! requests while slots are free (up to `max_batch_size` sequences), runs one forward over
//! the prompts of the newcomers and the last token of every running sequence together
//! (a ragged batch, no padding), and retires sequences that finished. Requests can join
//! and leave between any two steps, which is what continuous batching in the server needs.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::detokenizer::{IncrementalDecoder, decode};
use super::error::{InferError, Result};
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
    prefilled: bool,
    state: State,
}

/// The engine over one model; owns the KV cache.
pub struct Engine<'m> {
    model: &'m CausalLm,
    tokenizer: &'m Tokenizer,
    max_batch_size: usize,
    cache: KvCache,
    waiting: VecDeque<(RequestId, Request, Option<AdapterId>)>,
    running: Vec<Running>,
    next_id: RequestId,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m CausalLm, tokenizer: &'m Tokenizer, max_batch_size: usize) -> Self {
        Engine {
            model,
            tokenizer,
            max_batch_size: max_batch_size.max(1),
            cache: model.new_kv_cache(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
        }
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
        let context = self.model.config.max_position_embeddings;
        if request.prompt.is_empty() {
            return Err(InferError::EmptyPrompt);
        }
        if request.prompt.len() >= context {
            return Err(InferError::PromptTooLong {
                prompt_tokens: request.prompt.len(),
                limit: context,
                what: "the model's context (max_position_embeddings in config.json)".into(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back((id, request, adapter));
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

    /// Drops a request wherever it is (its client went away) and frees its cache slots;
    /// no event is reported for it. False when the id is unknown or already finished.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|(w, _, _)| *w == id) {
            self.waiting.remove(i);
            return true;
        }
        let Some(i) = self.running.iter().position(|r| r.id == id) else {
            return false;
        };
        let r = self.running.remove(i);
        match r.state {
            State::Sample(s) => self.cache.free(s.slot),
            State::Beams(b) => {
                for slot in b.beams.iter().map(|beam| beam.slot).chain(b.spare) {
                    self.cache.free(slot);
                }
            }
        }
        true
    }

    /// Sequences decoded together right now.
    pub fn running_sequences(&self) -> usize {
        self.running.iter().map(Running::slots).sum()
    }

    /// Admits what fits, runs one forward, samples, and reports deltas and finished outputs.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        self.admit();
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let (tokens, spans, routing) = self.batch()?;
        let (model, cache) = (self.model, &mut self.cache);
        let logits = with_routing(&routing, || {
            model.forward_infer(&tokens, &spans, cache, LogitRows::Last)
        })?;
        let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(crate::model::ModelError::from)?;
        let mut rows = logits.into_iter();
        let mut events = Vec::new();
        let mut still_running = Vec::with_capacity(self.running.len());
        for mut r in std::mem::take(&mut self.running) {
            r.prefilled = true;
            let done = match &mut r.state {
                State::Sample(s) => {
                    let row = rows
                        .next()
                        .ok_or_else(|| InferError::Internal("missing logits row".into()))?;
                    sample_step(
                        s,
                        row,
                        &r.prompt,
                        &r.params,
                        r.budget,
                        self.tokenizer,
                        r.id,
                        &mut events,
                    )
                }
                State::Beams(b) => {
                    let rows: Vec<Vec<f32>> = rows.by_ref().take(b.beams.len()).collect();
                    beam_step(b, rows, &r.prompt, &r.params, r.budget, &mut self.cache)?
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
        let ids: Vec<RequestId> = requests
            .into_iter()
            .map(|r| self.add_request(r))
            .collect::<Result<_>>()?;
        let mut outputs: Vec<Option<Output>> = vec![None; ids.len()];
        while !self.is_idle() {
            for event in self.step()? {
                on_event(&event);
                if let Event::Finished(out) = event
                    && let Some(i) = ids.iter().position(|&id| id == out.id)
                {
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

    fn admit(&mut self) {
        while let Some((_, front, _)) = self.waiting.front() {
            let need = front.params.num_beams.max(1);
            let used = self.running_sequences();
            if used > 0 && used + need > self.max_batch_size {
                break;
            }
            let Some((id, request, adapter)) = self.waiting.pop_front() else {
                break;
            };
            let running = self.start(id, request, adapter);
            self.running.push(running);
        }
    }

    fn start(&mut self, id: RequestId, request: Request, adapter: Option<AdapterId>) -> Running {
        let context = self.model.config.max_position_embeddings;
        let room = context - request.prompt.len();
        let budget = request.params.max_new_tokens.map_or(room, |m| m.min(room));
        // The last generated token is never fed back, so prompt + budget - 1 positions suffice.
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
            prefilled: false,
            state,
        }
    }

    /// The tokens and spans of this step: whole prompts for new requests, the last token
    /// of every live sequence otherwise; and the adapter of each span's rows.
    fn batch(&self) -> Result<(Vec<u32>, Vec<SeqSpan>, Vec<RowRun>)> {
        let mut tokens = Vec::new();
        let mut spans: Vec<SeqSpan> = Vec::new();
        let mut routing = Vec::new();
        for r in &self.running {
            let seqs: Vec<(SlotId, &[u32])> = match &r.state {
                State::Sample(s) => vec![(s.slot, &s.generated)],
                State::Beams(b) => b
                    .beams
                    .iter()
                    .map(|beam| (beam.slot, beam.generated.as_slice()))
                    .collect(),
            };
            for (slot, generated) in seqs {
                let before = tokens.len();
                if !r.prefilled {
                    tokens.extend_from_slice(&r.prompt);
                    spans.push(SeqSpan {
                        slot,
                        start: 0,
                        len: r.prompt.len(),
                    });
                } else {
                    let last = *generated.last().ok_or_else(|| {
                        InferError::Internal("decode step without a token".into())
                    })?;
                    tokens.push(last);
                    spans.push(SeqSpan {
                        slot,
                        start: self.cache.len(slot)?,
                        len: 1,
                    });
                }
                routing.push(RowRun {
                    rows: tokens.len() - before,
                    adapter: r.adapter,
                });
            }
        }
        Ok((tokens, spans, routing))
    }

    fn finish(&mut self, r: Running, reason: FinishReason) -> Output {
        match r.state {
            State::Sample(mut s) => {
                self.cache.free(s.slot);
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
            State::Beams(b) => {
                for beam in &b.beams {
                    self.cache.free(beam.slot);
                }
                for &slot in &b.spare {
                    self.cache.free(slot);
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
