#!/usr/bin/env python3
"""PiSSA initialisation time: kubeswift's `--init_weights pissa` against PEFT's
`init_lora_weights="pissa"` on the same model (LoRA r8, all-linear), same machine.

PEFT's figure is `get_peft_model` with the exact SVD (`torch.linalg.svd` of every adapted
weight, in f32); ours is the `PiSSA: adapters initialised` log line of a one-step
`swift sft`, which times the same work (the SVDs and the residual weights). Prints a
Markdown table.

    .venv/bench-train/bin/python scripts/bench/bench_pissa.py \\
        --ours target/release/swift --model .cache/models/SmolLM2-135M-Instruct
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peft_seconds(model_dir: str, rank: int, init: str) -> tuple[float, int]:
    """Seconds PEFT's get_peft_model spends on the PiSSA init, and the adapted layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=32, target_modules="all-linear", init_lora_weights=init)
    start = time.perf_counter()
    peft_model = get_peft_model(model, config)
    seconds = time.perf_counter() - start
    layers = sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A"))
    return seconds, layers


def ours_seconds(swift: str, model_dir: str, rank: int, init: str) -> tuple[float, int]:
    """Seconds our PiSSA init took (from its log line), and the adapted layers."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "d.jsonl")
        with open(data, "w") as f:
            row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
            f.write(json.dumps(row) + "\n")
        out = subprocess.run(
            [swift, "sft", "--model", model_dir, "--dataset", data, "--train_type", "lora",
             "--lora_rank", str(rank), "--lora_alpha", "32", "--target_modules", "all-linear",
             "--init_weights", init, "--max_steps", "1", "--save_strategy", "no",
             "--split_dataset_ratio", "0", "--report_to", "none", "--output_dir", tmp],
            capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
        )
    log = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"swift sft failed ({out.returncode}):\n{log[-2000:]}")
    m = re.search(r"PiSSA: adapters initialised.*?layers=(\d+).*?seconds=([0-9.]+)", log)
    if not m:
        sys.exit(f"no PiSSA timing line in the log:\n{log[-2000:]}")
    return float(m.group(2)), int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", default=os.path.join(ROOT, "target", "release", "swift"))
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--init", default="pissa", help="pissa or pissa_niter_N")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs; the fastest of each is kept")
    a = ap.parse_args()
    peft, ours = [], []
    for _ in range(a.rounds):
        ours.append(ours_seconds(a.ours, a.model, a.rank, a.init))
        peft.append(peft_seconds(a.model, a.rank, a.init))
    (o, o_layers), (p, p_layers) = min(ours), min(peft)
    print(f"\nPiSSA init ({a.init}), LoRA r{a.rank} all-linear, {os.path.basename(a.model)}, "
          f"best of {a.rounds}, {os.cpu_count()} CPUs\n")
    print("| engine | layers | seconds | per layer |")
    print("|---|---:|---:|---:|")
    print(f"| kubeswift | {o_layers} | {o:.2f} | {1e3 * o / o_layers:.0f} ms |")
    print(f"| PEFT (torch.linalg.svd) | {p_layers} | {p:.2f} | {1e3 * p / p_layers:.0f} ms |")


if __name__ == "__main__":
    main()
