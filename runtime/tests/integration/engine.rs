//! The generation engine on the tiny fixture models: greedy and beam search against
//! transformers' `generate`, batching invariance, sampling reproducibility, stop rules,
//! logprobs, streaming, and context limits; chunked prefill, prefix caching and the KV
//! budget (preemption) leave every output unchanged.

use std::path::{Path, PathBuf};

use candle_core::DType;
use kubeswift_runtime::infer::{
    Engine, EngineOptions, EngineStats, Event, FinishReason, GenerationParams, InferError, Output,
    Request, SamplingConfig,
};
use kubeswift_runtime::model::{LoadOptions, Pretrained, PretrainedOptions};
use serde_json::Value;

const FIXTURES: [&str; 3] = ["tiny-Qwen2.5", "tiny-Qwen3", "tiny-Llama-3.2"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load(name: &str) -> Pretrained {
    let opts = PretrainedOptions {
        model_type: None,
        load: LoadOptions {
            dtype: Some(DType::F32),
            trainable: false,
            ..LoadOptions::default()
        },
    };
    Pretrained::load(&fixture(name), &opts).unwrap()
}

/// (prompt, greedy continuation, 3-beam continuation) per reference prompt.
fn references(name: &str) -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (ids(&p["input_ids"]), ids(&p["greedy"]), ids(&p["beam3"])))
        .collect()
}

fn greedy(max_new_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_new_tokens: Some(max_new_tokens),
        ..GenerationParams::default()
    }
}

fn sampled(seed: u64) -> GenerationParams {
    GenerationParams {
        sampling: SamplingConfig {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
        },
        max_new_tokens: Some(12),
        seed,
        ..GenerationParams::default()
    }
}

fn run(p: &Pretrained, requests: Vec<Request>, max_batch_size: usize) -> Vec<Vec<u32>> {
    let mut engine = Engine::new(&p.model, &p.tokenizer, max_batch_size);
    engine
        .generate(requests, |_| {})
        .unwrap()
        .into_iter()
        .map(|o| o.tokens)
        .collect()
}

#[test]
fn greedy_and_beam_search_match_transformers_generate() {
    for name in FIXTURES {
        let p = load(name);
        for (i, (prompt, want_greedy, want_beam)) in references(name).into_iter().enumerate() {
            let n = want_greedy.len();
            let got = run(
                &p,
                vec![Request {
                    prompt: prompt.clone(),
                    params: greedy(n),
                }],
                1,
            );
            assert_eq!(got[0], want_greedy, "{name} prompt {i} greedy");
            let beam = GenerationParams {
                num_beams: 3,
                ..greedy(n)
            };
            let got = run(
                &p,
                vec![Request {
                    prompt,
                    params: beam,
                }],
                3,
            );
            assert_eq!(got[0], want_beam, "{name} prompt {i} beam search");
        }
    }
}

#[test]
fn batching_does_not_change_any_sequence() {
    let p = load("tiny-Qwen2.5");
    let refs = references("tiny-Qwen2.5");
    let requests: Vec<Request> = refs
        .iter()
        .enumerate()
        .map(|(i, (prompt, _, _))| Request {
            prompt: prompt.clone(),
            params: if i % 2 == 0 { greedy(10) } else { sampled(7) },
        })
        .collect();
    let one_at_a_time: Vec<Vec<u32>> = requests
        .iter()
        .map(|r| run(&p, vec![r.clone()], 1)[0].clone())
        .collect();
    for max_batch_size in [2, 8] {
        let batched = run(&p, requests.clone(), max_batch_size);
        // Sampled requests use a per-request generator: only their ids in this engine
        // differ between the single runs (each id 0) and the batch (ids 0..n).
        for (i, (a, b)) in batched.iter().zip(&one_at_a_time).enumerate() {
            if i % 2 == 0 {
                assert_eq!(a, b, "request {i} at max_batch_size {max_batch_size}");
            }
        }
    }
    // Same requests, same order, any batch size: identical sampled outputs too.
    assert_eq!(run(&p, requests.clone(), 2), run(&p, requests, 8));
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let p = load("tiny-Qwen3");
    let prompt = references("tiny-Qwen3")[0].0.clone();
    let go = |seed| {
        run(
            &p,
            vec![Request {
                prompt: prompt.clone(),
                params: sampled(seed),
            }],
            1,
        )[0]
        .clone()
    };
    assert_eq!(go(1), go(1));
    let distinct: std::collections::HashSet<Vec<u32>> = (0..6).map(go).collect();
    assert!(
        distinct.len() > 1,
        "different seeds should give different samples"
    );
}

#[test]
fn stop_tokens_are_removed_and_stop_words_kept() {
    let p = load("tiny-Qwen2.5");
    let (prompt, want, _) = references("tiny-Qwen2.5").remove(0);
    // Make the 4th greedy token a stop token: output is the first three.
    let params = GenerationParams {
        stop_token_ids: vec![want[3]],
        ..greedy(8)
    };
    let mut engine = Engine::new(&p.model, &p.tokenizer, 1);
    let out = engine
        .generate(
            vec![Request {
                prompt: prompt.clone(),
                params,
            }],
            |_| {},
        )
        .unwrap()
        .remove(0);
    assert_eq!(out.tokens, want[..3]);
    assert_eq!(out.finish_reason, FinishReason::Stop);

    // A stop word taken from the greedy text ends generation with the word in the output.
    let full = run(
        &p,
        vec![Request {
            prompt: prompt.clone(),
            params: greedy(8),
        }],
        1,
    )[0]
    .clone();
    let text = p.tokenizer.decode(&full, false).unwrap();
    let word: String = text.chars().skip(2).take(2).collect();
    let params = GenerationParams {
        stop_words: vec![word.clone()],
        ..greedy(8)
    };
    let out = engine
        .generate(vec![Request { prompt, params }], |_| {})
        .unwrap()
        .remove(0);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert!(
        out.text.contains(&word),
        "{:?} should keep {word:?}",
        out.text
    );
    assert!(out.tokens.len() < full.len());
}

#[test]
fn max_new_tokens_and_streaming_deltas() {
    let p = load("tiny-Llama-3.2");
    let prompt = references("tiny-Llama-3.2")[1].0.clone();
    let mut engine = Engine::new(&p.model, &p.tokenizer, 1);
    let mut streamed = String::new();
    let out = engine
        .generate(
            vec![Request {
                prompt,
                params: greedy(5),
            }],
            |e| {
                if let Event::Delta { text, .. } = e {
                    streamed.push_str(text);
                }
            },
        )
        .unwrap()
        .remove(0);
    assert_eq!(out.tokens.len(), 5);
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(streamed, out.text);
}

#[test]
fn logprobs_are_of_the_chosen_tokens() {
    let p = load("tiny-Qwen3");
    let prompt = references("tiny-Qwen3")[0].0.clone();
    let params = GenerationParams {
        logprobs: true,
        top_logprobs: 3,
        ..greedy(4)
    };
    let mut engine = Engine::new(&p.model, &p.tokenizer, 1);
    let out = engine
        .generate(vec![Request { prompt, params }], |_| {})
        .unwrap()
        .remove(0);
    let lps = out.logprobs.unwrap();
    assert_eq!(lps.len(), 4);
    for lp in lps {
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, lp.token);
        assert!(lp.logprob <= 0.0 && lp.logprob == lp.top[0].1);
        assert!(lp.top[1].1 <= lp.top[0].1);
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let p = load("tiny-Qwen3"); // max_position_embeddings 256
    let mut engine = Engine::new(&p.model, &p.tokenizer, 1);
    let err = engine
        .add_request(Request {
            prompt: vec![5; 300],
            params: greedy(4),
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferError::PromptTooLong {
                prompt_tokens: 300,
                limit: 256,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // Generation near the end of the context stops at the context instead of overflowing.
    let out = engine
        .generate(
            vec![Request {
                prompt: vec![5; 250],
                params: greedy(100),
            }],
            |_| {},
        )
        .unwrap()
        .remove(0);
    assert_eq!(out.tokens.len(), 6);
    assert_eq!(out.finish_reason, FinishReason::Length);
}

#[test]
fn an_aborted_request_frees_its_place_and_leaves_the_others_unchanged() {
    let p = load("tiny-Qwen2.5");
    let refs = references("tiny-Qwen2.5");
    let request = |i: usize| Request {
        prompt: refs[i].0.clone(),
        params: greedy(10),
    };
    let mut engine = Engine::new(&p.model, &p.tokenizer, 2);
    let a = engine.add_request(request(0)).unwrap();
    let b = engine.add_request(request(1)).unwrap();
    let c = engine.add_request(request(2)).unwrap();
    engine.step().unwrap();
    assert_eq!(
        (engine.running_requests(), engine.waiting_requests()),
        (2, 1)
    );
    assert!(engine.abort(a), "a running request");
    assert!(engine.abort(c), "a waiting request");
    assert!(!engine.abort(a), "already gone");
    assert_eq!(
        (engine.running_requests(), engine.waiting_requests()),
        (1, 0)
    );
    let mut finished = Vec::new();
    while !engine.is_idle() {
        for e in engine.step().unwrap() {
            if let Event::Finished(o) = e {
                finished.push(o);
            }
        }
    }
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].id, b);
    assert_eq!(finished[0].tokens, run(&p, vec![request(1)], 1)[0]);
}

#[test]
fn an_exact_seed_draws_the_same_whatever_the_request_id() {
    let p = load("tiny-Qwen3");
    let prompt = references("tiny-Qwen3")[0].0.clone();
    let params = GenerationParams {
        exact_seed: true,
        ..sampled(5)
    };
    let request = Request {
        prompt,
        params: params.clone(),
    };
    // Alone (id 0) and third in a batch (id 2): the same draws.
    let alone = run(&p, vec![request.clone()], 1);
    let batched = run(&p, vec![request.clone(), request.clone(), request], 4);
    assert!(batched.iter().all(|b| *b == alone[0]));
}

/// Prompts that share a long first part (a system prompt), as the server sees them.
fn shared_prefix_requests(n: usize) -> Vec<Request> {
    let refs = references("tiny-Qwen2.5");
    let shared: Vec<u32> = refs.iter().flat_map(|r| r.0.clone()).collect();
    assert!(shared.len() >= 20, "the shared part must be worth caching");
    (0..n)
        .map(|i| {
            let mut prompt = shared.clone();
            prompt.extend(&refs[i % refs.len()].0[..1 + i % 3]);
            prompt.push(300 + i as u32);
            // Long enough answers that decoding outgrows a tight budget.
            let params = if i % 2 == 0 {
                greedy(20 + i % 4)
            } else {
                sampled(i as u64)
            };
            Request {
                prompt,
                params: GenerationParams {
                    max_new_tokens: Some(20 + i % 4),
                    ..params
                },
            }
        })
        .collect()
}

fn run_with(
    p: &Pretrained,
    requests: Vec<Request>,
    options: EngineOptions,
) -> (Vec<Output>, EngineStats) {
    let mut engine = Engine::with_options(&p.model, &p.tokenizer, options);
    let out = engine.generate(requests, |_| {}).unwrap();
    // Only cached prefixes remain, within the budget.
    if !options.prefix_caching {
        assert_eq!(engine.kv_tokens(), 0);
    }
    assert!(engine.kv_tokens() <= options.kv_budget_tokens.unwrap_or(usize::MAX));
    eprintln!("{:?}", engine.stats());
    (out, engine.stats())
}

#[test]
fn chunked_prefill_prefix_caching_and_preemption_leave_every_output_unchanged() {
    let p = load("tiny-Qwen2.5");
    let requests = shared_prefix_requests(6);
    let (want, plain) = run_with(&p, requests.clone(), EngineOptions::new(4));
    assert_eq!(plain.prefix_hit_tokens, 0);
    let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap();
    // A quarter for the prefix cache (one prompt), room for about three running requests:
    // the others wait, and running ones are preempted when decoding outgrows it.
    let budget = 4 * (longest + 8);
    let options = EngineOptions {
        max_batch_size: 4,
        kv_budget_tokens: Some(budget),
        max_step_tokens: 7,
        prefix_caching: true,
        max_model_len: None,
    };
    let (got, stats) = run_with(&p, requests.clone(), options);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "request {i}");
        assert_eq!(g.finish_reason, w.finish_reason, "request {i}");
    }
    // The first requests start together; the later ones find the shared part cached.
    assert!(stats.prefix_hit_tokens >= 2 * 20, "{stats:?}");
    assert!(stats.preemptions > 0, "{stats:?}");
    // Every prompt token was either computed or copied (re-prefills compute more).
    let prompts: u64 = requests.iter().map(|r| r.prompt.len() as u64).sum();
    assert!(
        stats.prefill_tokens + stats.prefix_hit_tokens >= prompts,
        "{stats:?}"
    );
    assert!(
        stats.prefill_tokens < prompts,
        "the cache saved prefill: {stats:?}"
    );
}

#[test]
fn chunked_prefill_streams_while_a_long_prompt_is_read() {
    let p = load("tiny-Qwen2.5");
    let refs = references("tiny-Qwen2.5");
    let long: Vec<u32> = refs
        .iter()
        .cycle()
        .take(12)
        .flat_map(|r| r.0.clone())
        .collect();
    let mut engine = Engine::with_options(
        &p.model,
        &p.tokenizer,
        EngineOptions {
            max_step_tokens: 8,
            ..EngineOptions::new(4)
        },
    );
    let short = refs[0].0.clone();
    engine
        .add_request(Request {
            prompt: short.clone(),
            params: greedy(60),
        })
        .unwrap();
    // Its prompt is read 8 tokens a step, then it decodes.
    let mut steps = 0;
    while engine.kv_tokens() < short.len() {
        engine.step().unwrap();
        steps += 1;
    }
    assert_eq!(steps, short.len().div_ceil(8));
    let reader = engine
        .add_request(Request {
            prompt: long.clone(),
            params: greedy(3),
        })
        .unwrap();
    // Each step: the decoding request's token and 7 tokens of the long prompt.
    for _ in 0..long.len().div_ceil(7) - 1 {
        let before = engine.kv_tokens();
        for e in engine.step().unwrap() {
            let id = match e {
                Event::Delta { id, .. } => id,
                Event::Finished(o) => o.id,
            };
            assert_ne!(
                id, reader,
                "the long prompt produced output before it was read"
            );
        }
        assert_eq!(engine.kv_tokens(), before + 8);
        assert_eq!(engine.running_requests(), 2);
    }
}

#[test]
fn a_request_alone_over_the_kv_budget_ends_with_length() {
    let p = load("tiny-Qwen2.5");
    let (prompt, want, _) = references("tiny-Qwen2.5").remove(0);
    let options = EngineOptions {
        kv_budget_tokens: Some(prompt.len() + 3),
        ..EngineOptions::new(1)
    };
    let mut engine = Engine::with_options(&p.model, &p.tokenizer, options);
    let out = engine
        .generate(
            vec![Request {
                prompt: prompt.clone(),
                params: greedy(want.len()),
            }],
            |_| {},
        )
        .unwrap()
        .remove(0);
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert!(
        !out.tokens.is_empty() && out.tokens.len() < want.len(),
        "{:?}",
        out.tokens
    );
    assert_eq!(
        out.tokens,
        want[..out.tokens.len()],
        "a prefix of the unbounded answer"
    );
    // A prompt that cannot fit at all is refused when it is queued, naming the budget.
    let err = engine
        .add_request(Request {
            prompt: [prompt.clone(), prompt.clone()].concat(),
            params: greedy(2),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KV cache budget (--gpu_memory_utilization)"),
        "{err}"
    );
    // --max_model_len caps the context below the model's.
    let mut capped = Engine::with_options(
        &p.model,
        &p.tokenizer,
        EngineOptions {
            max_model_len: Some(prompt.len()),
            ..EngineOptions::new(1)
        },
    );
    let err = capped
        .add_request(Request {
            prompt,
            params: greedy(2),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("--max_model_len"), "{err}");
}
