#!/usr/bin/env python3
"""Data-parallel scaling of kubeswift's `swift sft` on the CPU: one worker against two
(NPROC_PER_NODE=2, gradients over our TCP ring), same model, data and global batch, same
machine, same run; prints a table.

Model and data: bench_train.py's random ~106M Qwen2 (hidden 1024, 8 layers, vocab 8192)
and its rows of exactly --max_length tokens. LoRA r8 all-linear, f32, global batch
--batch (one process: per-device --batch; two workers: --batch/2 each), accumulation 1.

Runs (N = the machine's cores):
- 1 worker x N/2 threads   the per-worker baseline
- 1 worker x N threads     what one process gets out of the whole machine
- 2 workers x N/2 threads  as the launcher splits the cores (RAYON_NUM_THREADS)

Scaling efficiency = tokens/s of 2 workers / (2 x tokens/s of 1 worker) at the same threads
per worker (1.0 is perfect). On a machine with as many cores as threads in use, it says
what the gradient all-reduce and the extra process cost. The all-reduce itself is measured
by `cargo bench --bench ring_allreduce`.

    python scripts/bench/bench_scaling.py --ours target/release/swift
(the model is written with torch + transformers the first time: run it with a python that
has them, e.g. bench_train.sh's venv).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import CACHE, ROOT, run_engine, summarise, write_dataset, write_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", default=os.path.join(ROOT, "target", "release", "swift"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8, help="global batch (even)")
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    a.ours = os.path.abspath(a.ours)  # the runs start in their own folders
    assert a.batch % 2 == 0, "--batch must split over two workers"

    model = os.path.join(CACHE, "Qwen2-100M")
    write_model(model)
    data = os.path.join(CACHE, "scaling.jsonl")
    write_dataset(data, a.batch * (a.steps + 1))
    work = os.path.join(CACHE, "scaling")
    os.makedirs(work, exist_ok=True)

    half = max(a.cores // 2, 1)
    runs = [(f"1 worker x {half} thread(s)", 1, half)]
    if a.cores != half:
        runs.append((f"1 worker x {a.cores} threads", 1, a.cores))
    runs.append((f"2 workers x {half} thread(s) each", 2, half))
    tokens_per_step = a.batch * a.max_length
    results = {}
    for label, workers, threads in runs:
        out = os.path.join(work, f"w{workers}t{threads}")
        cmd = [
            a.ours, "sft", "--model", model, "--dataset", data, "--torch_dtype", "float32",
            "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0",
            "--target_modules", "all-linear",
            "--per_device_train_batch_size", str(a.batch // workers),
            "--gradient_accumulation_steps", "1", "--max_length", str(a.max_length),
            "--truncation_strategy", "right", "--gradient_checkpointing", "true",
            "--max_steps", str(a.steps), "--logging_steps", "1", "--save_strategy", "no",
            "--eval_strategy", "no", "--split_dataset_ratio", "0", "--learning_rate", "1e-4",
            "--seed", "42", "--data_seed", "42", "--average_tokens_across_devices", "true",
            "--report_to", "none", "--output_dir", os.path.join(out, "out"),
        ]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   SWIFT_LOG="info", MASTER_PORT="29531")
        for k in ("NPROC_PER_NODE", "NNODES", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(k, None)
        if workers > 1:
            # The launcher would split the cores itself; set explicitly so the row says
            # what ran.
            env["NPROC_PER_NODE"] = str(workers)
        print(f"running {label} ...", file=sys.stderr, flush=True)
        r = run_engine(cmd, out, env, a.steps, os.path.join(work, f"w{workers}t{threads}.log"))
        s = summarise(r, tokens_per_step)
        if not s["ok"]:
            print(f"{label}: failed (exit {r['rc']}); see {work}/w{workers}t{threads}.log", file=sys.stderr)
        s["losses"] = [r["losses"][k] for k in sorted(r["losses"])]
        results[(workers, threads)] = s

    print(f"\nLoRA SFT, ~106M Qwen2, f32, global batch {a.batch} x {a.max_length} tokens, "
          f"{a.steps} steps (first two are warm-up), {a.cores} cores\n")
    print("| run | tokens/s | s/step | peak RSS (GiB, all workers) | final loss |")
    print("|---|---|---|---|---|")
    for label, workers, threads in runs:
        s = results[(workers, threads)]
        if not s["ok"]:
            print(f"| {label} | failed | | | |")
            continue
        print(f"| {label} | {s['tok_s']:.0f} | {s['step_s']:.2f} | {s['peak_gib']:.2f} | "
              f"{s['losses'][-1]:.4f} |")
    one, two = results[(1, half)], results[(2, half)]
    if one["ok"] and two["ok"]:
        eff = two["tok_s"] / (2 * one["tok_s"])
        print(f"\nscaling efficiency, 2 workers vs 1 at {half} thread(s) each: {eff:.2f}")
        full = results.get((1, a.cores), {"ok": False})
        if full["ok"] and a.cores != half:
            print(f"2 workers x {half} vs 1 worker x {a.cores} threads (same cores): "
                  f"{two['tok_s'] / full['tok_s']:.2f}x")
        worst = max(abs(x - y) / max(abs(y), 1e-9) for x, y in zip(two["losses"], one["losses"]))
        print(f"loss curves, 2 workers vs 1: largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
