//! Prefill and decode throughput of the inference mode on a model folder.
//!
//!     cargo bench -p kubeswift-runtime --bench generate -- \
//!         --model .cache/models/SmolLM2-135M-Instruct --dtype bf16 --batch 8 --prompt 128 --new 64
//!
//! Prints one JSON line: `{"prefill_tok_s": .., "decode_tok_s": .., ...}`. Prefill is one
//! forward over `batch` prompts of `prompt` random tokens; decode is `new` greedy steps of
//! one token per sequence. `scripts/bench/bench_infer.py` runs it beside transformers and
//! llama.cpp and prints the table.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use kubeswift_runtime::model::config::{DecoderConfig, parse_dtype};
use kubeswift_runtime::model::{CausalLm, LoadOptions, LogitRows, SeqSpan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Opts {
    model: PathBuf,
    dtype: DType,
    batch: usize,
    prompt: usize,
    new: usize,
    repeat: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        model: PathBuf::from(".cache/models/SmolLM2-135M-Instruct"),
        dtype: DType::F32,
        batch: 1,
        prompt: 128,
        new: 64,
        repeat: 2,
    };
    // `cargo test --all-targets` runs this binary without `--bench`: a few tokens of the
    // tiny fixture model then, so the suite checks the bench works without timing anything.
    if !std::env::args().any(|a| a == "--bench") {
        o.model = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/models/tiny-Qwen2.5"
        ));
        o.prompt = 8;
        o.new = 4;
        o.repeat = 1;
    }
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // `cargo bench` passes --bench to harness-less benches.
        if flag == "--bench" {
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--model" => o.model = PathBuf::from(&value),
            "--dtype" => {
                o.dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => parse_dtype(other).ok_or(format!("--dtype {other}"))?,
                }
            }
            "--batch" => o.batch = num()?,
            "--prompt" => o.prompt = num()?,
            "--new" => o.new = num()?,
            "--repeat" => o.repeat = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// One prefill + decode run; returns (prefill seconds, decode seconds).
fn run(
    model: &CausalLm,
    o: &Opts,
    rng: &mut StdRng,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let vocab = model.config.vocab_size as u32;
    let mut cache = model.new_kv_cache();
    let slots: Vec<usize> = (0..o.batch)
        .map(|_| cache.allocate(o.prompt + o.new))
        .collect();
    let tokens: Vec<u32> = (0..o.batch * o.prompt)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let spans: Vec<SeqSpan> = slots
        .iter()
        .map(|&slot| SeqSpan {
            slot,
            start: 0,
            len: o.prompt,
        })
        .collect();
    let t0 = Instant::now();
    let logits = model.forward_infer(&tokens, &spans, &mut cache, LogitRows::Last)?;
    let mut next: Vec<u32> = logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect();
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..o.new {
        let spans: Vec<SeqSpan> = slots
            .iter()
            .map(|&slot| SeqSpan {
                slot,
                start: o.prompt + step,
                len: 1,
            })
            .collect();
        let logits = model.forward_infer(&next, &spans, &mut cache, LogitRows::Last)?;
        next = logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect();
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse()?;
    // As the `swift` binary does (see its main): freed buffers stay in the process.
    kubeswift_kernels::cpu::alloc::keep_freed_memory();
    let config = DecoderConfig::from_file(&o.model.join("config.json"))?;
    let opts = LoadOptions {
        dtype: Some(o.dtype),
        ..LoadOptions::default()
    };
    let model = CausalLm::load(&o.model, config, &opts)?;
    let mut rng = StdRng::seed_from_u64(0);
    // A short warm-up run touches every weight page and wakes the thread pool.
    run(
        &model,
        &Opts {
            prompt: 8,
            new: 2,
            model: o.model.clone(),
            ..o
        },
        &mut rng,
    )?;
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..o.repeat.max(1) {
        let (p, d) = run(&model, &o, &mut rng)?;
        best_prefill = best_prefill.min(p);
        best_decode = best_decode.min(d);
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": "kubeswift",
            "model": o.model.file_name().and_then(|n| n.to_str()),
            "dtype": format!("{:?}", o.dtype).to_lowercase(),
            "batch": o.batch,
            "prompt": o.prompt,
            "new": o.new,
            "threads": rayon::current_num_threads(),
            "prefill_tok_s": (o.batch * o.prompt) as f64 / best_prefill,
            "decode_tok_s": (o.batch * o.new) as f64 / best_decode,
        })
    );
    Ok(())
}
