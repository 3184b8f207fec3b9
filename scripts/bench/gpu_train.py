#!/usr/bin/env python3
"""GPU benchmark: kubeswift's `swift sft` (the `cuda` build) beside PyTorch + PEFT on the
same card in the same run; prints one table. Run by scripts/gpu-check.sh on a GPU host (no
network, no Rust: the host's python3 with torch, transformers and peft).

Models: random Qwen2.5-0.5B- and Qwen2.5-1.5B-shaped Qwen2 models (the real configs, tied
embeddings, vocabulary 151936), bf16, written here with a fixed seed, with the tiny test
fixture's tokenizer (its ids are a subset of the vocabulary).

Training (both engines): LoRA r8, alpha 32, all-linear, dropout 0, batch 8 x 1024 tokens
(every sample truncated to exactly 1024), gradient accumulation 1, no gradient
checkpointing, AdamW. PyTorch: transformers with SDPA attention, peft, bf16 weights, f32
LoRA weights (peft's default), timed with CUDA synchronisation over the steps after warm-up.
Ours: `swift sft --torch_dtype bfloat16`, timed by when each step's line appears in
logging.jsonl (the same method as scripts/bench/bench_train.py), steps after the first two.

MFU counts the FLOPs LoRA training needs per token, 4N (forward 2N, input gradients 2N; a
frozen weight needs no weight gradient) plus causal attention 6 L T d (forward 2 L T d,
backward twice that), over the bf16 dense peak (--peak_tflops, 989 for H100/H200 SXM).

Decode: Hugging Face `generate` (greedy, 32-token prompt, 128 new tokens) at batch 1 and 32.
kubeswift's decode runs on the CPU in this build (GPU inference is not built yet), so its
rows say so instead of a number.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train  # noqa: E402  (same folder: run_engine, summarise, WORDS)

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURE = os.path.join(ROOT, "runtime", "tests", "fixtures", "models", "tiny-Qwen2.5")

# The shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (their config.json).
SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2),
}


def write_model(folder: str, shape: dict) -> int:
    """Writes the random model once; returns its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                         torch_dtype="bfloat16", **shape)
    if not os.path.exists(os.path.join(folder, "config.json")):
        os.makedirs(folder, exist_ok=True)
        torch.manual_seed(20261203)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(os.path.join(FIXTURE, name), folder)
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return n * per_layer + 151936 * h


def write_dataset(path: str, rows: int) -> None:
    """Chat rows whose answers are far longer than 1024 tokens (seeded)."""
    import random

    rng = random.Random(7)
    with open(path, "w") as f:
        for _ in range(rows):
            query = " ".join(rng.choice(bench_train.WORDS) for _ in range(8))
            answer = " ".join(rng.choice(bench_train.WORDS) for _ in range(1500))
            f.write(json.dumps({"messages": [{"role": "user", "content": query},
                                             {"role": "assistant", "content": answer}]}) + "\n")


def torch_train(folder: str, a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 8000, (a.batch, a.seq), device="cuda", generator=g)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    torch.cuda.empty_cache()
    return {"ok": True, "tok_s": a.batch * a.seq * a.steps / dt, "peak_gib": peak}


def ours_train(swift: str, folder: str, data: str, out: str, a) -> dict:
    cmd = [swift, "sft", "--model", folder, "--dataset", data, "--torch_dtype", "bfloat16",
           "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0",
           "--target_modules", "all-linear", "--per_device_train_batch_size", str(a.batch),
           "--gradient_accumulation_steps", "1", "--max_length", str(a.seq),
           "--truncation_strategy", "right", "--gradient_checkpointing", "false",
           "--max_steps", str(a.steps + 2), "--logging_steps", "1", "--save_strategy", "no",
           "--eval_strategy", "no", "--split_dataset_ratio", "0", "--report_to", "none",
           "--output_dir", os.path.join(out, "out")]
    log = os.path.join(os.path.dirname(out), os.path.basename(out) + ".log")
    r = bench_train.run_engine(cmd, out, dict(os.environ), a.steps + 2, log)
    s = bench_train.summarise(r, a.batch * a.seq)
    if not s["ok"]:
        with open(log) as f:
            s["error"] = f.read()[-2000:]
    return s


def torch_decode(folder: str, batch: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda().eval()
    ids = torch.randint(0, 8000, (batch, 32), device="cuda")
    kw = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
    model.generate(ids, **kw)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, **kw)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return batch * 128 / dt


def flops_per_token(n_params: int, shape: dict, seq: int) -> float:
    return 4 * n_params + 6 * shape["num_hidden_layers"] * seq * shape["hidden_size"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="the cuda build of kubeswift's swift")
    ap.add_argument("--work", required=True, help="a scratch folder (models are written here)")
    ap.add_argument("--models", default="0.5B,1.5B")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak_tflops", type=float, default=989.0)
    ap.add_argument("--skip_decode", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    data = os.path.join(a.work, "train.jsonl")
    write_dataset(data, a.batch * (a.steps + 4))

    rows, results = [], {}
    for name in a.models.split(","):
        shape = SHAPES[name]
        folder = os.path.join(a.work, f"Qwen2.5-{name}-random")
        n = write_model(folder, shape)
        fpt = flops_per_token(n, shape, a.seq)
        theirs = torch_train(folder, a)
        ours = ours_train(a.ours, folder, data, os.path.join(a.work, f"ours-{name}"), a)
        results[name] = {"params": n, "torch": theirs, "ours": ours}
        for who, r in (("PyTorch + PEFT", theirs), ("kubeswift", ours)):
            if r["ok"]:
                mfu = r["tok_s"] * fpt / (a.peak_tflops * 1e12)
                rows.append(f"| {name} LoRA SFT | {who} | {r['tok_s']:,.0f} tok/s | MFU {mfu:.1%} |")
            else:
                rows.append(f"| {name} LoRA SFT | {who} | failed | see {name} log |")
        if ours["ok"] and theirs["ok"]:
            rows.append(f"| {name} LoRA SFT | ratio ours/PyTorch | {ours['tok_s'] / theirs['tok_s']:.2f}x | target 1.2x, MFU 45% |")
        if not a.skip_decode:
            for batch in (1, 32):
                tps = torch_decode(folder, batch)
                results[name][f"decode_b{batch}"] = tps
                rows.append(f"| {name} decode b{batch} | HF generate | {tps:,.0f} tok/s | |")
                rows.append(f"| {name} decode b{batch} | kubeswift | not built on GPU | |")

    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print("| what | engine | speed | note |\n|---|---|---|---|")
    print("\n".join(rows))
    for name, r in results.items():
        if "error" in r["ours"]:
            print(f"\nkubeswift {name} failed; the end of its log:\n{r['ours']['error']}")


if __name__ == "__main__":
    main()
