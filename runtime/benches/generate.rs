//! Prefill and decode throughput of the inference mode on a model folder.
//!
//!     cargo bench -p kubeswift-runtime --bench generate -- \
//!         --model .cache/models/SmolLM2-135M-Instruct --dtype bf16 --batch 8 --prompt 128 --new 64
//!
//! Prints one JSON line: `{"prefill_tok_s": .., "decode_tok_s": .., ...}`. Prefill is one
//! forward over `batch` prompts of `prompt` random tokens; decode is `new` greedy steps of
//! one token per sequence. `scripts/bench/bench_infer.py` runs it beside transformers and
//! llama.cpp and prints the table.
//!
//! `--read-bandwidth` instead prints `{"read_gb_s": ..}`: how fast this machine's threads
//! can read memory, the ceiling of batch-1 decode (which reads every weight once a token).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use kubeswift_kernels::cpu::{par, rowdot};
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
    read_bandwidth: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        model: PathBuf::from(".cache/models/SmolLM2-135M-Instruct"),
        dtype: DType::F32,
        batch: 1,
        prompt: 128,
        new: 64,
        repeat: 2,
        read_bandwidth: false,
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
        if flag == "--read-bandwidth" {
            o.read_bandwidth = true;
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

/// Bytes a second the thread pool the decode kernels run on can read: every thread sums
/// its share of a buffer far larger than the caches, held on huge pages as the weights
/// are; best of several passes, as the decode figures are. With `kernel`, the pieces are
/// instead read by the batch-1 decode kernel (`rowdot::rows_dot`, one input row against
/// 1024-wide weight rows), which says how close that kernel gets to the plain read.
fn read_bandwidth(kernel: bool) -> f64 {
    const K: usize = 1024;
    let n = (512 << 20) / 4;
    let data = vec![1f32; n];
    kubeswift_kernels::cpu::alloc::back_with_huge_pages(&data);
    let tasks = 256;
    let per = n / tasks / K * K;
    let x = vec![1f32; K];
    let mut best = 0f64;
    for _ in 0..10 {
        let t = Instant::now();
        let sums = par::map(tasks, |i| {
            let piece = &data[i * per..(i + 1) * per];
            if kernel {
                let mut out = vec![0f32; per / K];
                rowdot::rows_dot(&x, piece, K, &mut out);
                out.iter().sum()
            } else {
                plain_sum(piece)
            }
        });
        std::hint::black_box(sums.iter().sum::<f32>());
        best = best.max((tasks * per * 4) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// A sum with as little work per byte as the CPU allows (AVX2 where present), so memory
/// is the only limit.
fn plain_sum(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { plain_sum_avx2(xs) };
    }
    let mut acc = [0f32; 16];
    for c in xs.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn plain_sum_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in xs.chunks_exact(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 32 floats, so `c[8 * j..]` has 8.
            *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * j)) });
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe {
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
        )
    };
    lanes.iter().sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse()?;
    // As the `swift` binary does (see its main): freed buffers stay in the process.
    kubeswift_kernels::cpu::alloc::keep_freed_memory();
    if o.read_bandwidth {
        let read = read_bandwidth(false) / 1e9;
        let kernel = read_bandwidth(true) / 1e9;
        println!(
            "{}",
            serde_json::json!({ "threads": par::threads(), "read_gb_s": read, "decode_kernel_gb_s": kernel })
        );
        return Ok(());
    }
    let config = DecoderConfig::from_file(&o.model.join("config.json"))?;
    let opts = LoadOptions {
        dtype: Some(o.dtype),
        ..LoadOptions::default()
    };
    let model = CausalLm::load(&o.model, config, &opts)?;
    // What one batch-1 decode step reads: every weight, except that an input embedding not
    // shared with the output layer gives one row per token.
    let params = model.named_parameters();
    let untied = params.iter().any(|(name, _)| name == "lm_head.weight");
    let streamed_bytes: usize = params
        .iter()
        .filter(|(name, _)| !(untied && name.ends_with("embed_tokens.weight")))
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
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
            "threads": par::threads(),
            "streamed_bytes": streamed_bytes,
            "prefill_tok_s": (o.batch * o.prompt) as f64 / best_prefill,
            "decode_tok_s": (o.batch * o.new) as f64 / best_decode,
        })
    );
    Ok(())
}
