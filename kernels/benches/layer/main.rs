//! Benchmark: one Qwen2.5-0.5B decoder layer (256 tokens, batch 1, LoRA r16 on all seven
//! linears, frozen base) forward + backward, with this crate's kernels, in plain candle ops,
//! and in PyTorch (scripts/torch_layer.py, run in the same invocation), f32 and bf16.
//!
//! `cargo bench -p kubeswift-kernels --bench layer -- [--iters N] [--tokens T]
//!  [--dtypes f32,bf16] [--no-torch] [--no-plain] [--no-layer] [--ops] [--gemm]
//!  [--gemm-dims HIDDEN,INTERMEDIATE,KV] [--malloc-defaults]`
//!
//! By default glibc malloc is tuned as the `swift` binary tunes it
//! (`cpu::alloc::keep_freed_memory`), in this process and through `MALLOC_*` variables in
//! PyTorch's, so neither side pays page faults for memory it just freed.
//! `--malloc-defaults` leaves glibc's defaults on both sides.
//!
//! `--ops` adds a per-kernel breakdown and `--gemm` the GEMM throughput at the layer's
//! shapes (ours vs candle's matmul and PyTorch's `F.linear`) and at decode shapes (`rowdot`
//! vs our GEMM). `--gemm-dims` takes that table at another model's widths (default
//! Qwen2.5-0.5B's `896,4864,128`; `1024,2816,256` is bench_train.py's ~100M Qwen2).
//! PyTorch runs with `$KUBESWIFT_BENCH_PYTHON`, else `/work/venv-py/bin/python`, else
//! `python3`.

mod model;

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use kubeswift_kernels::cpu::gemm::{Epilogue, LowRank, MatRef, gemm, gemm_seq, gemm_then};
use kubeswift_kernels::cpu::isa;
use kubeswift_kernels::cpu::rowdot;
use kubeswift_kernels::{AttnMask, attention, lora_linear, reference, rms_norm, rope, silu_mul};

struct Args {
    iters: usize,
    warmup: usize,
    tokens: usize,
    dtypes: Vec<DType>,
    torch: bool,
    plain: bool,
    layer: bool,
    keep_freed_memory: bool,
    ops: bool,
    gemm: bool,
    /// hidden, intermediate and k/v projection widths for the GEMM table.
    gemm_dims: (usize, usize, usize),
}

fn parse_args() -> Args {
    let mut args = Args {
        iters: 10,
        warmup: 2,
        tokens: 256,
        dtypes: vec![DType::F32, DType::BF16],
        torch: true,
        plain: true,
        layer: true,
        keep_freed_memory: true,
        ops: false,
        gemm: false,
        gemm_dims: (896, 4864, 128),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this binary without `--bench`: a one-iteration smoke
    // run at 16 tokens without PyTorch then, so the suite checks the bench still works
    // without spending minutes in it.
    if !argv.iter().any(|a| a == "--bench") {
        args.iters = 1;
        args.warmup = 0;
        args.tokens = 16;
        args.torch = false;
    }
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--iters" => {
                args.iters = value.parse().unwrap_or(args.iters);
                i += 1;
            }
            "--warmup" => {
                args.warmup = value.parse().unwrap_or(args.warmup);
                i += 1;
            }
            "--tokens" => {
                args.tokens = value.parse().unwrap_or(args.tokens);
                i += 1;
            }
            "--dtypes" => {
                args.dtypes = value
                    .split(',')
                    .filter_map(|d| match d {
                        "f32" => Some(DType::F32),
                        "bf16" => Some(DType::BF16),
                        _ => None,
                    })
                    .collect();
                i += 1;
            }
            "--gemm-dims" => {
                let dims: Vec<usize> = value.split(',').filter_map(|d| d.parse().ok()).collect();
                if let [hidden, inter, kv] = dims[..] {
                    args.gemm_dims = (hidden, inter, kv);
                } else {
                    eprintln!("--gemm-dims wants HIDDEN,INTERMEDIATE,KV, got {value:?}");
                }
                i += 1;
            }
            "--no-torch" => args.torch = false,
            "--no-plain" => args.plain = false,
            "--no-layer" => args.layer = false,
            "--malloc-defaults" => args.keep_freed_memory = false,
            "--ops" => args.ops = true,
            "--gemm" => args.gemm = true,
            _ => {} // `cargo bench` passes `--bench`
        }
        i += 1;
    }
    args
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Median and minimum of `iters` timed runs after `warmup` untimed ones, in ms.
fn time_ms(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t = Instant::now();
        f()?;
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples[0]))
}

struct Row {
    name: String,
    dtype: &'static str,
    forward: f64,
    backward: f64,
}

/// Times forward and backward (gradient of the output's sum) of one layer variant.
fn bench_layer(args: &Args, dtype: DType, kernels: bool) -> Result<Row> {
    let dev = Device::Cpu;
    let cfg = model::Config::qwen2_5_0_5b();
    let layer = model::Layer::new(cfg, dtype, &dev, 1, false)?;
    let t = args.tokens;
    let x = candle_core::Var::from_tensor(
        &reference::random(99, &[1, t, cfg.hidden], 1.0, &dev)?.to_dtype(dtype)?,
    )?;
    let positions = Tensor::arange(0u32, t as u32, &dev)?.reshape((1, t))?;
    let mask = AttnMask::causal();
    let forward = || {
        if kernels {
            layer.forward_kernels(x.as_tensor(), &positions, &mask)
        } else {
            layer.forward_plain(x.as_tensor(), &positions)
        }
    };
    let mut fwd = Vec::new();
    let mut bwd = Vec::new();
    for i in 0..args.warmup + args.iters {
        let t0 = Instant::now();
        let y = forward()?;
        let t1 = Instant::now();
        let grads = y.backward()?;
        let t2 = Instant::now();
        drop(grads);
        if i >= args.warmup {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Row {
        name: if kernels {
            "kubeswift kernels".into()
        } else {
            "plain candle".into()
        },
        dtype: dtype_name(dtype),
        forward: median(&mut fwd),
        backward: median(&mut bwd),
    })
}

/// Runs scripts/torch_layer.py with the bench's sizes and `extra`, and parses its JSON
/// lines; empty (with the reason on stderr) when the peer cannot run.
fn run_torch_peer(args: &Args, extra: &[&str]) -> Vec<serde_json::Value> {
    let python = std::env::var("KUBESWIFT_BENCH_PYTHON")
        .ok()
        .unwrap_or_else(|| {
            if std::path::Path::new("/work/venv-py/bin/python").exists() {
                "/work/venv-py/bin/python".into()
            } else {
                "python3".into()
            }
        });
    let script = std::env::var("KUBESWIFT_BENCH_TORCH_SCRIPT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/torch_layer.py").into());
    let dtypes: Vec<&str> = args.dtypes.iter().map(|d| dtype_name(*d)).collect();
    let mut cmd = Command::new(&python);
    if args.keep_freed_memory {
        cmd.env("MALLOC_MMAP_THRESHOLD_", "33554432")
            .env("MALLOC_TRIM_THRESHOLD_", "2147483647");
    }
    let out = cmd
        .arg(&script)
        .args(["--tokens", &args.tokens.to_string()])
        .args(["--iters", &args.iters.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--threads", &threads().to_string()])
        .args(["--dtypes", &dtypes.join(",")])
        .args(extra)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "pytorch peer failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!("pytorch peer not run ({python}: {e})");
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The PyTorch layer's forward and backward times, one row per dtype.
fn bench_torch(args: &Args) -> Vec<Row> {
    run_torch_peer(args, &[])
        .into_iter()
        .map(|v| Row {
            name: format!(
                "{} ({})",
                v["impl"].as_str().unwrap_or("pytorch"),
                v["cpu_capability"].as_str().unwrap_or("?")
            ),
            dtype: if v["dtype"] == "bf16" { "bf16" } else { "f32" },
            forward: v["forward_ms"].as_f64().unwrap_or(f64::NAN),
            backward: v["backward_ms"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

fn print_layer_table(args: &Args, rows: &[Row]) {
    println!(
        "\nQwen2.5-0.5B decoder layer, {} tokens, batch 1, LoRA r16 on q/k/v/o/gate/up/down, frozen base",
        args.tokens
    );
    println!(
        "{}, threads {}, kernel ISA {:?}, malloc {}, median of {} iterations (ms)\n",
        cpu_model(),
        threads(),
        isa::active(),
        if args.keep_freed_memory {
            "keeps freed memory"
        } else {
            "glibc defaults"
        },
        args.iters
    );
    println!("| implementation | dtype | forward ms | backward ms | total ms |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.dtype,
            r.forward,
            r.backward,
            r.forward + r.backward
        );
    }
}

/// Per-kernel timings at the layer's shapes (forward, and forward + backward).
fn bench_ops(args: &Args, dtype: DType) -> Result<()> {
    let dev = Device::Cpu;
    let cfg = model::Config::qwen2_5_0_5b();
    let t = args.tokens;
    let r = |seed, dims: &[usize], s| -> Result<Tensor> {
        reference::random(seed, dims, s, &dev)?.to_dtype(dtype)
    };
    let var = |t: Tensor| candle_core::Var::from_tensor(&t);
    let (w, i) = (args.warmup, args.iters);
    println!(
        "\nper-kernel timings, {} (median ms): forward | forward+backward",
        dtype_name(dtype)
    );
    let report = |name: &str, f: (f64, f64), fb: (f64, f64)| {
        println!("  {name:<34} {:>8.2} | {:>8.2}", f.0, fb.0);
    };

    let x = var(r(1, &[1, t, cfg.hidden], 1.0)?)?;
    let ln = r(2, &[cfg.hidden], 1.0)?;
    report(
        "rms_norm [256, 896]",
        time_ms(w, i, || rms_norm(x.as_tensor(), &ln, 1e-6).map(drop))?,
        time_ms(w, i, || {
            rms_norm(x.as_tensor(), &ln, 1e-6)?.backward().map(drop)
        })?,
    );

    let layer = model::Layer::new(cfg, dtype, &dev, 1, false)?;
    for (name, lin, inp) in [
        ("lora_linear q 896->896", &layer.q_proj, cfg.hidden),
        ("lora_linear k 896->128", &layer.k_proj, cfg.hidden),
        ("lora_linear gate 896->4864", &layer.gate_proj, cfg.hidden),
        (
            "lora_linear down 4864->896",
            &layer.down_proj,
            cfg.intermediate,
        ),
    ] {
        let x = var(r(3, &[1, t, inp], 1.0)?)?;
        let f = || {
            lora_linear(
                x.as_tensor(),
                &lin.w,
                lin.b.as_ref(),
                &lin.a,
                &lin.b_lora,
                lin.scale,
            )
        };
        report(
            name,
            time_ms(w, i, || f().map(drop))?,
            time_ms(w, i, || f()?.backward().map(drop))?,
        );
    }

    let q = var(r(4, &[1, t, cfg.heads, cfg.head_dim], 1.0)?)?;
    let k = var(r(5, &[1, t, cfg.kv_heads, cfg.head_dim], 1.0)?)?;
    let v = var(r(6, &[1, t, cfg.kv_heads, cfg.head_dim], 1.0)?)?;
    let pos = Tensor::arange(0u32, t as u32, &dev)?.reshape((1, t))?;
    let rope_q = || {
        rope(
            &q.as_tensor().transpose(1, 2)?,
            &layer.cos,
            &layer.sin,
            &pos,
        )
    };
    report(
        "rope q [1, 14, 256, 64]",
        time_ms(w, i, || rope_q().map(drop))?,
        time_ms(w, i, || rope_q()?.backward().map(drop))?,
    );
    let mask = AttnMask::causal();
    let att = || {
        attention(
            &q.as_tensor().transpose(1, 2)?,
            &k.as_tensor().transpose(1, 2)?,
            &v.as_tensor().transpose(1, 2)?,
            &mask,
        )
    };
    report(
        "attention 14/2 heads causal",
        time_ms(w, i, || att().map(drop))?,
        time_ms(w, i, || att()?.backward().map(drop))?,
    );
    // The training bench's attention (`scripts/bench/bench_train.py`: the ~100M Qwen2, batch
    // 8 x 256 tokens), whatever `--tokens` says: short key rows, many small tile products.
    let (nb, nt, nh, nkv, hd) = (8, 256, 16, 4, 64);
    let q8 = var(r(9, &[nb, nt, nh, hd], 1.0)?)?;
    let k8 = var(r(10, &[nb, nt, nkv, hd], 1.0)?)?;
    let v8 = var(r(11, &[nb, nt, nkv, hd], 1.0)?)?;
    let att8 = || {
        attention(
            &q8.as_tensor().transpose(1, 2)?,
            &k8.as_tensor().transpose(1, 2)?,
            &v8.as_tensor().transpose(1, 2)?,
            &mask,
        )
    };
    report(
        "attention 8 x 16/4 heads x 256 causal",
        time_ms(w, i, || att8().map(drop))?,
        time_ms(w, i, || att8()?.backward().map(drop))?,
    );

    let g = var(r(7, &[1, t, cfg.intermediate], 2.0)?)?;
    let u = var(r(8, &[1, t, cfg.intermediate], 1.0)?)?;
    report(
        "silu_mul [256, 4864]",
        time_ms(w, i, || silu_mul(g.as_tensor(), u.as_tensor()).map(drop))?,
        time_ms(w, i, || {
            silu_mul(g.as_tensor(), u.as_tensor())?.backward().map(drop)
        })?,
    );
    Ok(())
}

/// GEMM throughput at the layer's shapes: ours vs candle's matmul.
fn bench_gemm(args: &Args) -> Result<()> {
    let dev = Device::Cpu;
    let t = args.tokens;
    // PyTorch's `F.linear` at the same shapes, same threads, run first so the two do not
    // share the cores: the GEMM is where both training engines spend most of a step.
    let torch: Vec<serde_json::Value> = if args.torch {
        let (h, i, kv) = args.gemm_dims;
        let (h, i, kv) = (h.to_string(), i.to_string(), kv.to_string());
        run_torch_peer(
            args,
            &[
                "--gemm",
                "--hidden",
                &h,
                "--intermediate",
                &i,
                "--kv-dim",
                &kv,
            ],
        )
    } else {
        Vec::new()
    };
    let torch_gflops = |m: usize, n: usize, k: usize, dtype: &str| {
        torch
            .iter()
            .find(|v| v["gemm"] == serde_json::json!([m, n, k]) && v["dtype"] == dtype)
            .and_then(|v| v["gflops_best"].as_f64().or_else(|| v["gflops"].as_f64()))
            .map_or("-".to_string(), |g| format!("{g:.0}"))
    };
    // Best of the iterations for all three: PyTorch runs in its own process before ours, so
    // on a VM whose speed drifts the medians compared different machine speeds.
    println!(
        "\nGEMM GFLOP/s, best of {} iterations, C[m, n] = A[m, k] B[n, k]^T (a linear layer's forward)",
        args.iters
    );
    println!("| m x n x k | dtype | ours | candle matmul | pytorch F.linear |");
    println!("|---|---|---:|---:|---:|");
    let (h, i, kv) = args.gemm_dims;
    for (m, n, k) in [(t, i, h), (t, h, i), (t, h, h), (t, kv, h)] {
        for dtype in &args.dtypes {
            let a = reference::random(1, &[m, k], 1.0, &dev)?.to_dtype(*dtype)?;
            let b = reference::random(2, &[n, k], 1.0, &dev)?.to_dtype(*dtype)?;
            let flops = 2.0 * (m * n * k) as f64;
            let mut c = vec![0f32; m * n];
            let ours = match dtype {
                DType::BF16 => {
                    let av = a.flatten_all()?.to_vec1::<half::bf16>()?;
                    let bv = b.flatten_all()?.to_vec1::<half::bf16>()?;
                    time_ms(args.warmup, args.iters, || {
                        gemm(
                            MatRef::row_major(&av, m, k),
                            MatRef::row_major(&bv, n, k).t(),
                            &mut c,
                            n,
                            1.0,
                            0.0,
                        );
                        Ok(())
                    })?
                }
                _ => {
                    let av = a.flatten_all()?.to_vec1::<f32>()?;
                    let bv = b.flatten_all()?.to_vec1::<f32>()?;
                    time_ms(args.warmup, args.iters, || {
                        gemm(
                            MatRef::row_major(&av, m, k),
                            MatRef::row_major(&bv, n, k).t(),
                            &mut c,
                            n,
                            1.0,
                            0.0,
                        );
                        Ok(())
                    })?
                }
            };
            let bt = b.t()?;
            let theirs = time_ms(args.warmup, args.iters, || a.matmul(&bt).map(drop))?;
            println!(
                "| {m} x {n} x {k} | {} | {:.0} | {:.0} | {} |",
                dtype_name(*dtype),
                flops / ours.1 / 1e6,
                flops / theirs.1 / 1e6,
                torch_gflops(m, n, k, dtype_name(*dtype))
            );
        }
    }
    Ok(())
}

/// The products of a LoRA layer's backward (and the adapter's forward), f32: where a
/// training step spends its GEMM time beyond the forward's `x W^T`.
fn bench_gemm_training(args: &Args) -> Result<()> {
    let (t, r) = (args.tokens, 16);
    println!("\nGEMM GFLOP/s at LoRA training shapes (f32, r = {r}): ours");
    println!("| product | m x n x k | GFLOP/s |");
    println!("|---|---|---:|");
    // (name, m, n, k, A transposed, B transposed): A is [m, k] (or stored [k, m]), B is
    // [k, n] (or stored [n, k]).
    let shapes: [(&str, usize, usize, usize, bool, bool); 7] = [
        ("dx = g W (up/gate)", t, 896, 4864, false, false),
        ("dx = g W (down)", t, 4864, 896, false, false),
        ("xa = x A^T", t, r, 896, false, true),
        ("y += xa B^T", t, 4864, r, false, true),
        ("gb = g B", t, r, 4864, false, false),
        ("dA = gb^T x", r, 896, t, true, false),
        ("dB = g^T xa", 4864, r, t, true, false),
    ];
    for (name, m, n, k, at, bt) in shapes {
        let a: Vec<f32> = reference::random(1, &[m * k], 1.0, &Device::Cpu)?.to_vec1()?;
        let b: Vec<f32> = reference::random(2, &[k * n], 1.0, &Device::Cpu)?.to_vec1()?;
        let am = if at {
            MatRef::row_major(&a, k, m).t()
        } else {
            MatRef::row_major(&a, m, k)
        };
        let bm = if bt {
            MatRef::row_major(&b, n, k).t()
        } else {
            MatRef::row_major(&b, k, n)
        };
        let mut c = vec![0f32; m * n];
        let ms = time_ms(args.warmup, args.iters, || {
            gemm(am, bm, &mut c, n, 1.0, 0.0);
            Ok(())
        })?;
        let gflops = 2.0 * (m * n * k) as f64 / ms.0 / 1e6;
        println!("| {name} | {m} x {n} x {k} | {gflops:.0} |");
    }
    Ok(())
}

/// What a LoRA layer's forward pays for its adapter term `s (x A^T) B^T` (r = 8) fused into
/// the product's tiles (`gemm_then` with a low-rank epilogue) over the plain `x W^T`, f32,
/// at the layer's forward shapes. The two run alternately, so a drift of the machine's speed
/// hits both; best of each.
fn bench_lora_epilogue(args: &Args) -> Result<()> {
    let (t, r) = (args.tokens, 8);
    let (h, i, _) = args.gemm_dims;
    println!("\nLoRA forward, adapter term fused into the product's tiles (f32, r = {r}), best ms");
    println!("| m x n x k | x W^T | x W^T + s xa B^T | overhead |");
    println!("|---|---:|---:|---:|");
    for (m, n, k) in [(t, h, h), (t, i, h)] {
        let a: Vec<f32> = reference::random(1, &[m * k], 1.0, &Device::Cpu)?.to_vec1()?;
        let w: Vec<f32> = reference::random(2, &[n * k], 1.0, &Device::Cpu)?.to_vec1()?;
        let xa: Vec<f32> = reference::random(3, &[m * r], 1.0, &Device::Cpu)?.to_vec1()?;
        let bt: Vec<f32> = reference::random(4, &[r * n], 1.0, &Device::Cpu)?.to_vec1()?;
        let (am, wm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&w, n, k).t());
        let mut c = vec![0f32; m * n];
        let (mut plain, mut fused) = (f64::MAX, f64::MAX);
        for _ in 0..args.warmup + args.iters {
            let start = Instant::now();
            gemm(am, wm, &mut c, n, 1.0, 0.0);
            plain = plain.min(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            let term = LowRank {
                lhs: &xa,
                p: &bt,
                rank: r,
                scale: 4.0,
            };
            gemm_then(
                am,
                wm,
                &mut c,
                n,
                1.0,
                0.0,
                &Epilogue::new(n).low_rank(term),
            );
            fused = fused.min(start.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| {m} x {n} x {k} | {plain:.2} | {fused:.2} | {:.1}% |",
            (fused / plain - 1.0) * 100.0
        );
    }
    Ok(())
}

/// Decode-shaped products (a few rows against a large weight), one thread: the
/// `rowdot` kernel inference decodes with beside the blocked GEMM, to place the crossover.
fn bench_rowdot(args: &Args) -> Result<()> {
    let dev = Device::Cpu;
    println!("\nDecode-shaped products, one thread, GFLOP/s: C[m, n] = X[m, k] W[n, k]^T");
    println!("| m x n x k | weights | rows_dot | gemm |");
    println!("|---|---|---:|---:|");
    // Qwen2.5-0.5B's MLP shapes (they fit this CPU's L3) and SmolLM2's lm_head, which
    // does not: the last streams from memory, as every layer does in a real decode step.
    for (n, k) in [(4864, 896), (896, 4864), (49152, 576)] {
        for m in [1, 4, 16, 64] {
            for dtype in &args.dtypes {
                let x = reference::random(1, &[m, k], 1.0, &dev)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let w = reference::random(2, &[n, k], 1.0, &dev)?;
                let flops = 2.0 * (m * n * k) as f64;
                let mut c = vec![0f32; m * n];
                let (rd, gm) = match dtype {
                    DType::BF16 => {
                        let w = w.to_dtype(DType::BF16)?.flatten_all()?;
                        time_rows_dot_and_gemm(args, &x, &w.to_vec1::<half::bf16>()?, k, &mut c)?
                    }
                    _ => {
                        let w = w.flatten_all()?.to_vec1::<f32>()?;
                        time_rows_dot_and_gemm(args, &x, &w, k, &mut c)?
                    }
                };
                println!(
                    "| {m} x {n} x {k} | {} | {:.0} | {:.0} |",
                    dtype_name(*dtype),
                    flops / rd.0 / 1e6,
                    flops / gm.0 / 1e6
                );
            }
        }
    }
    Ok(())
}

/// Times `rows_dot` and the one-thread GEMM on the same product: `x` `[m, k]` against
/// weights `w` `[n, k]` into `c`.
fn time_rows_dot_and_gemm<T: kubeswift_kernels::cpu::gemm::Elem>(
    args: &Args,
    x: &[f32],
    w: &[T],
    k: usize,
    c: &mut [f32],
) -> Result<((f64, f64), (f64, f64))> {
    let (m, n) = (x.len() / k, w.len() / k);
    let rd = time_ms(args.warmup, args.iters, || {
        rowdot::rows_dot(x, w, k, c);
        Ok(())
    })?;
    let gm = time_ms(args.warmup, args.iters, || {
        let (a, b) = (MatRef::row_major(x, m, k), MatRef::row_major(w, n, k).t());
        gemm_seq(a, b, c, n, 1.0, 0.0);
        Ok(())
    })?;
    Ok((rd, gm))
}

/// The CPU's model name, to label the table.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Threads our kernels (and candle's elementwise ops) run on.
fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

fn main() -> Result<()> {
    let args = parse_args();
    if args.keep_freed_memory && !kubeswift_kernels::cpu::alloc::keep_freed_memory() {
        eprintln!("not a glibc target: allocator left as is");
    }
    if args.gemm {
        bench_gemm(&args)?;
        bench_gemm_training(&args)?;
        bench_lora_epilogue(&args)?;
        bench_rowdot(&args)?;
    }
    if args.ops {
        for dtype in &args.dtypes {
            bench_ops(&args, *dtype)?;
        }
    }
    if !args.layer {
        return Ok(());
    }
    let mut rows = Vec::new();
    for dtype in &args.dtypes {
        rows.push(bench_layer(&args, *dtype, true)?);
        if args.plain {
            rows.push(bench_layer(&args, *dtype, false)?);
        }
    }
    if args.torch {
        rows.extend(bench_torch(&args));
    }
    rows.sort_by_key(|r| r.dtype == "bf16");
    print_layer_table(&args, &rows);
    Ok(())
}
