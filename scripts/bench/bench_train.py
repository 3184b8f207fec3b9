#!/usr/bin/env python3
"""LoRA SFT throughput, peak memory and start-up time of kubeswift's `swift sft` beside
ms-swift's `swift sft` (PyPI `ms-swift` + torch), same model, data and settings, same
machine, same run; prints a table and both loss curves.

Model: a random ~106M Qwen2 (hidden 1024, 8 layers, 16 heads, 4 kv heads, intermediate
2816, vocab 8192, untied) written here with a fixed seed, with the byte-level BPE tokenizer
and ChatML template of the tiny Qwen2.5 test fixture. Data: generated `messages` rows whose
assistant turn is longer than --max_length, so every sample is exactly --max_length tokens
after right truncation and both engines see the same number of tokens per step.

Settings (both engines): LoRA r8, alpha 32, all-linear, dropout 0, per-device batch 8,
gradient accumulation 1, max_length 256, logging every step, no saving, no eval, one
process; dtype f32 and bf16, gradient checkpointing on and off (`--ckpt`), and optionally
ours with `--recompute_granularity selective` beside ms-swift's checkpointing (`selective`).

What is measured, from outside both processes, the same way:
- tokens/s: batch x max_length tokens per step, over the steps after the first two
  (warm-up), timed by when each step's line appears in the run's logging.jsonl;
- peak RSS: the process tree's peak (ms-swift's `swift` launcher starts a Python child):
  the sum of each process's kernel high-water mark (VmHWM), read every half second, or
  at exit the largest single process's (`wait4`), whichever is larger;
- start to first step: from spawning the process to the first step's log line, minus one
  median step (so it estimates when the first step began; a first step that pays for
  first-touching its memory counts as start);
- loop start: from spawning the process to when its own log says the training loop
  begins (ours: the `training` line; ms-swift: its `Train:` progress bar appearing), as
  seen by polling the log; the direct reading of the same moment.

The watching costs next to no CPU (a stat of each log every 20 ms, /proc every half
second): both engines use both cores, and a watcher that takes a slice of one slows them.

On a shared machine whose speed drifts over minutes, `--rounds N` runs each setting N times
with the engines alternating and keeps each engine's fastest run; `--timeout S` kills a run
that has not finished after S seconds (ms-swift's bf16 on a CPU without bf16 instructions
does not finish a step in minutes) and reports it as timed out with the steps it logged.

Run through scripts/bench/bench_train.sh (it installs ms-swift into the ignored
.venv/bench-train and builds the release `swift`), or directly:
    python scripts/bench/bench_train.py --ours target/release/swift --ms-swift /path/to/venv/bin/swift
"""

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CACHE = os.path.join(ROOT, ".cache", "bench-train")
FIXTURE_TOKENIZER = os.path.join(ROOT, "runtime", "tests", "fixtures", "models", "tiny-Qwen2.5")
WORDS = (
    "the capital of france is paris and the capital of germany is berlin rust is a systems "
    "programming language focused on safety speed and concurrency kubernetes schedules pods "
    "onto nodes a job runs pods until they complete fine-tuning adapts a pretrained language "
    "model to a task with a small dataset lora adds low-rank matrices to the linear layers"
).split()


# ---------------------------------------------------------------- inputs

def write_model(folder: str) -> None:
    """The random ~106M Qwen2 in HF layout (seeded; written once)."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(FIXTURE_TOKENIZER, "config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    config = Qwen2Config(
        vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=None, eos_token_id=eos,
    )
    torch.manual_seed(20241128)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(FIXTURE_TOKENIZER, name), folder)


def write_dataset(path: str, rows: int) -> None:
    """`rows` chat samples whose answers are far longer than max_length (seeded)."""
    import random

    rng = random.Random(7)
    with open(path, "w") as f:
        for _ in range(rows):
            query = " ".join(rng.choice(WORDS) for _ in range(8))
            answer = " ".join(rng.choice(WORDS) for _ in range(300))
            f.write(json.dumps({"messages": [
                {"role": "user", "content": query},
                {"role": "assistant", "content": answer},
            ]}) + "\n")


# ---------------------------------------------------------------- running one engine

def tree_peak_rss_bytes(root_pid: int) -> int:
    """Sum over `root_pid` and all its descendants of each one's peak resident set so far
    (`VmHWM`, which the kernel keeps, so sampling it seldom misses no peak), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


class NewLines:
    """The lines appended to a growing file since the last call; a stat per call while
    nothing changed, so polling it often costs next to nothing."""

    def __init__(self, path: str):
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[str]:
        try:
            if os.stat(self.path).st_size <= self.offset:
                return []
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


# What each engine prints when its training loop begins.
LOOP_MARKERS = {
    "kubeswift": "kubeswift_runtime::train::trainer",
    "ms-swift": "Train:",
}


def run_engine(cmd: list[str], out_dir: str, env: dict, steps: int, log_path: str,
               timeout: float, loop_marker: str | None = None) -> dict:
    """Runs one training command; returns step times, losses, peak RSS and exit status.
    A run still going after `timeout` seconds is killed with its whole process group
    (ms-swift's launcher runs the trainer as a child) and marked as timed out.

    The watching must not take CPU from the run it measures (two cores, both busy): every
    20 ms it only stats the two logs, reading what was appended; the process tree's peak RSS
    (kernel high-water marks, which keep peaks between samples) is read every half second,
    and at exit the kernel's own maximum for the tree (`wait4`) covers the last half second.
    An earlier version scanned /proc and re-read whole logs every 20 ms, ~2.5 ms of a core
    each time, which slowed kubeswift (whose two threads meet at every op) by ~7%."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out_dir,
                                start_new_session=True)
        step_times: dict[int, float] = {}
        losses: dict[int, float] = {}
        peak = 0
        timed_out = False
        loop_start = None
        console = NewLines(log_path)
        metrics = None
        next_rss = 0.0
        while True:
            now = time.perf_counter() - t0
            if loop_marker and loop_start is None:
                if any(loop_marker in line for line in console.read()):
                    loop_start = now
            if not timed_out and now > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            done = pid != 0
            if done:
                proc.returncode = os.waitstatus_to_exitcode(status)
                # ru_maxrss (KiB): the largest of the root and its reaped descendants.
                peak = max(peak, usage.ru_maxrss * 1024)
            elif now >= next_rss:
                peak = max(peak, tree_peak_rss_bytes(proc.pid))
                next_rss = now + 0.5
            if metrics is None:
                found = glob.glob(os.path.join(out_dir, "out", "*", "logging.jsonl"))
                metrics = NewLines(found[0]) if found else None
            for line in metrics.read() if metrics else []:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "loss" in rec and "global_step/max_steps" in rec:
                    step = int(str(rec["global_step/max_steps"]).split("/")[0])
                    step_times.setdefault(step, time.perf_counter() - t0)
                    losses[step] = float(rec["loss"])
            if done:
                break
            time.sleep(0.02)
    return {"rc": proc.returncode, "times": step_times, "losses": losses, "peak": peak,
            "wall": time.perf_counter() - t0, "steps": steps, "timed_out": timed_out,
            "loop_start": loop_start}


def summarise(r: dict, tokens_per_step: int) -> dict:
    times = [r["times"][s] for s in sorted(r["times"])]
    if r["timed_out"]:
        return {"ok": False, "why": f"timed out ({r['wall']:.0f} s, {len(times)} steps)"}
    if r["rc"] != 0 or len(times) < 4:
        return {"ok": False, "why": f"failed (rc {r['rc']})"}
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    step = statistics.median([b - a for a, b in zip(times, times[1:])])
    return {
        "ok": True,
        "tok_s": tokens_per_step * len(gaps) / sum(gaps),
        "peak_gib": r["peak"] / 2**30,
        "start_s": max(times[0] - step, 0.0),
        "loop_start_s": r["loop_start"],
        "step_s": step,
    }


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


# How the table names a checkpointing setting (ms-swift runs "selective" rows with its own,
# full, checkpointing: it has no selective mode).
CKPT_LABELS = {"on": "on", "off": "off", "selective": "selective (ms-swift: on)"}


def common_args(a, model, data, dtype, ckpt, out):
    return [
        "--model", model, "--dataset", data, "--torch_dtype", {"f32": "float32", "bf16": "bfloat16"}[dtype],
        "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0", "--target_modules", "all-linear",
        "--per_device_train_batch_size", str(a.batch), "--gradient_accumulation_steps", "1",
        "--max_length", str(a.max_length), "--truncation_strategy", "right",
        "--gradient_checkpointing", "true" if ckpt else "false",
        "--max_steps", str(a.steps), "--logging_steps", "1", "--save_strategy", "no",
        "--eval_strategy", "no", "--split_dataset_ratio", "0", "--learning_rate", "1e-4",
        "--seed", "42", "--data_seed", "42", "--dataloader_num_workers", "0",
        "--dataset_num_proc", "1", "--report_to", "none", "--output_dir", out,
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", default=os.path.join(ROOT, "target", "release", "swift"),
                    help="kubeswift's `swift` (`none` to run ms-swift alone)")
    ap.add_argument("--ms-swift", dest="ms_swift", default=None, help="ms-swift's `swift` executable")
    ap.add_argument("--ms-swift-tuner-flag", default="--tuner_type",
                    help="ms-swift 4 calls it --tuner_type, ms-swift 3 --train_type")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--ckpt", default="on,off",
                    help="gradient checkpointing settings: on, off, selective (ours with "
                         "--recompute_granularity selective; ms-swift, which has no such mode, "
                         "runs with its checkpointing on)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per engine and setting, engines alternating; the table keeps each engine's fastest")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds one engine's run may take before it is killed and reported as timed out")
    a = ap.parse_args()
    a.ours = os.path.abspath(a.ours) if a.ours != "none" else a.ours
    a.ms_swift = os.path.abspath(a.ms_swift) if a.ms_swift else None

    os.makedirs(CACHE, exist_ok=True)
    model = os.path.join(CACHE, "Qwen2-100M")
    data = os.path.join(CACHE, "train.jsonl")
    write_model(model)
    write_dataset(data, a.batch * (a.steps + 2))
    tokens_per_step = a.batch * a.max_length
    threads = str(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, RAYON_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               MODELSCOPE_CACHE=os.path.join(CACHE, "modelscope"), HF_HUB_OFFLINE="1")
    env.pop("NPROC_PER_NODE", None)  # ms-swift would go through torchrun
    # (name, executable, its name for --train_type, extra arguments)
    engines = [("kubeswift", a.ours, "--train_type", [])] if a.ours != "none" else []
    if a.ms_swift:
        # ms-swift cannot tell qwen2 from qwen2_gte for a local folder without a hub id.
        # transformers refuses bf16 without a GPU unless told the run is on the CPU.
        engines.append(("ms-swift", a.ms_swift, a.ms_swift_tuner_flag,
                        ["--model_type", "qwen2", "--template", "qwen", "--use_cpu", "true"]))

    rows, curves = [], {}
    for dtype in a.dtypes.split(","):
        for ckpt in a.ckpt.split(","):
            if ckpt not in ("on", "off", "selective"):
                sys.exit(f"--ckpt: {ckpt!r} is not on, off or selective")
            row = {"dtype": dtype, "grad_ckpt": ckpt}
            # Engines alternate within a round, so a slow spell of a shared machine does not
            # land on one engine only; each engine keeps its fastest round.
            runs = []
            for name, exe, tuner_flag, extra in engines:
                work = os.path.join(CACHE, "runs", f"{name}-{dtype}-ckpt-{ckpt}")
                granularity = (["--recompute_granularity", "selective"]
                               if ckpt == "selective" and name == "kubeswift" else [])
                cmd = ([exe, "sft", tuner_flag, "lora"]
                       + common_args(a, model, data, dtype, ckpt != "off", os.path.join(work, "out"))
                       + extra + granularity)
                runs.append((name, work, cmd))
            for round_no in range(1, a.rounds + 1):
                for name, work, cmd in runs:
                    r = run_engine(cmd, work, env, a.steps, work + ".log", a.timeout,
                                   LOOP_MARKERS.get(name))
                    s = summarise(r, tokens_per_step)
                    label = f"{name} {dtype} ckpt={ckpt}" + (f" round {round_no}" if a.rounds > 1 else "")
                    if not s["ok"]:
                        print(f"{label}: {s['why']}, log {work}.log", file=sys.stderr)
                    else:
                        print(f"{label}: {s['tok_s']:.0f} tok/s, peak {s['peak_gib']:.2f} GiB, "
                              f"start {s['start_s']:.1f} s, loop start {fmt_s(s['loop_start_s'])}",
                              file=sys.stderr, flush=True)
                    best = row.get(name)
                    if best is None or (s["ok"] and (not best["ok"] or s["tok_s"] > best["tok_s"])):
                        row[name] = s
                        curves[(name, dtype, ckpt)] = [r["losses"][k] for k in sorted(r["losses"])]
            rows.append(row)

    print(f"\nLoRA r8 all-linear, Qwen2 ~106M, batch {a.batch} x {a.max_length} tokens, {a.steps} steps "
          f"(first two are warm-up), {a.threads} threads"
          + (f", best of {a.rounds} alternating rounds" if a.rounds > 1 else "") + "\n")
    names = [e[0] for e in engines]
    head = "| dtype | grad ckpt | " + " | ".join(
        f"{n} tok/s | {n} peak RSS GiB | {n} start s | {n} loop start s" for n in names)
    head += " | speed ratio | RSS ratio |" if len(names) == 2 else " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        cells = [row["dtype"], CKPT_LABELS[row["grad_ckpt"]]]
        for n in names:
            s = row[n]
            cells += ([f"{s['tok_s']:.0f}", f"{s['peak_gib']:.2f}", f"{s['start_s']:.1f}",
                       fmt_s(s["loop_start_s"])] if s["ok"] else [s["why"], "-", "-", "-"])
        if len(names) == 2:
            x, y = row[names[0]], row[names[1]]
            if x["ok"] and y["ok"]:
                cells += [f"{x['tok_s'] / y['tok_s']:.2f}x", f"{x['peak_gib'] / y['peak_gib']:.2f}x"]
            else:
                cells += ["-", "-"]
        print("| " + " | ".join(cells) + " |")
    for dtype in a.dtypes.split(","):
        ours = [r for r in rows if r["dtype"] == dtype]
        off = next((r for r in ours if r["grad_ckpt"] == "off"), None)
        for on in (r for r in ours if r["grad_ckpt"] != "off"):
            for n in names:
                if off and on[n]["ok"] and off[n]["ok"]:
                    print(f"{n} {dtype}: gradient checkpointing {CKPT_LABELS[on['grad_ckpt']]} saves "
                          f"{off[n]['peak_gib'] - on[n]['peak_gib']:.2f} GiB of peak RSS")
    print("\nloss per step:")
    for (name, dtype, ckpt), losses in curves.items():
        print(f"  {name:9} {dtype:4} ckpt={ckpt:9}: " + " ".join(f"{x:.3f}" for x in losses))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "curves": {"|".join(map(str, k)): v for k, v in curves.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
