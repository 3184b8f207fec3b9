#!/usr/bin/env python3
"""Prefill and decode tokens/s of kubeswift's inference mode beside Hugging Face
transformers `generate` and llama.cpp (llama-cpp-python), same weights, same machine, same
run, and prints the table.

Models: SmolLM2-135M-Instruct (scripts/fixtures/fetch_smollm2.sh puts it in .cache/models)
and a random ~106M Qwen2 (hidden 1024, 8 layers, 16 heads, 4 kv heads, intermediate 2816,
vocab 8192, untied), written here with a fixed seed. Dtypes: f32 (llama.cpp on an f32 GGUF)
and bf16 (kubeswift and torch in bf16; llama.cpp on an f16 GGUF, its half-precision format).
Batches 1 and 8: B prompts of --prompt random tokens, then --new greedy tokens each.
Every engine uses --threads threads (default 2, the CI machine's cores).

Batch-1 decode reads every weight once per token, so memory bandwidth bounds it. The bench
also measures how fast --threads threads read memory here (`generate --read-bandwidth`,
beside every row, keeping the best) and prints a second table for the batch-1 rows: the
bytes a second each engine's decode streams (tokens/s x the weight bytes a step reads) and what 3x
transformers would have to stream, both against that ceiling.

Run through scripts/bench/bench_infer.sh (it installs torch, transformers, gguf and
llama-cpp-python into the ignored .venv/bench), or directly with a Python that has them:
    python scripts/bench/bench_infer.py [--prompt 128 --new 64 --threads 2]
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CACHE = os.path.join(ROOT, ".cache", "bench")
SMOLLM2 = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct")
QWEN2 = os.path.join(CACHE, "Qwen2-100M")
FOLDERS = {"SmolLM2-135M": SMOLLM2, "Qwen2-100M": QWEN2}


# ---------------------------------------------------------------- model preparation

def write_qwen2_100m(folder: str) -> None:
    """A random Qwen2 of ~106M parameters in HF layout (seeded; written once)."""
    from safetensors.numpy import save_file

    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return
    os.makedirs(folder, exist_ok=True)
    h, inter, layers, heads, kv, vocab = 1024, 2816, 8, 16, 4, 8192
    d = h // heads
    rng = np.random.default_rng(1234)
    w = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)  # noqa: E731
    t = {"model.embed_tokens.weight": w(vocab, h), "lm_head.weight": w(vocab, h),
         "model.norm.weight": np.ones(h, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        t[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
        t[f"{p}.self_attn.q_proj.weight"] = w(heads * d, h)
        t[f"{p}.self_attn.q_proj.bias"] = w(heads * d)
        t[f"{p}.self_attn.k_proj.weight"] = w(kv * d, h)
        t[f"{p}.self_attn.k_proj.bias"] = w(kv * d)
        t[f"{p}.self_attn.v_proj.weight"] = w(kv * d, h)
        t[f"{p}.self_attn.v_proj.bias"] = w(kv * d)
        t[f"{p}.self_attn.o_proj.weight"] = w(h, heads * d)
        t[f"{p}.mlp.gate_proj.weight"] = w(inter, h)
        t[f"{p}.mlp.up_proj.weight"] = w(inter, h)
        t[f"{p}.mlp.down_proj.weight"] = w(h, inter)
    save_file(t, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
        "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    n = sum(v.size for v in t.values())
    print(f"wrote {folder} ({n / 1e6:.0f}M parameters)", file=sys.stderr)


# Qwen2's pre-tokenizer split (its tokenizer.json; llama.cpp's "qwen2" pre-tokenizer).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chat_corpus(words: int = 400_000):
    """Seeded text for the chat model's tokenizer: Zipf-distributed pseudo-words (so a BPE
    finds ~8k merges), digits and punctuation, and the English the serving bench sends."""
    import random

    rng = random.Random(8192)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v",
              "w", "z", "st", "tr", "ch", "sh", "pl", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ee"]
    lexicon = ["".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))
               for _ in range(30_000)]
    english = ("tell me about the history of the city and its rivers you are a helpful "
               "assistant for a tourism office answer questions about bridges museums parks").split()
    weights = [1.0 / (r + 1) for r in range(len(lexicon))]
    for _ in range(words // 20):
        picked = rng.choices(lexicon, weights, k=20)
        picked[rng.randrange(20)] = rng.choice(english)
        line = " ".join(picked).capitalize() + rng.choice([".", "?", "!", ", " + str(rng.randint(0, 9999)) + "."])
        yield line


def write_qwen2_chat(folder: str) -> None:
    """QWEN2's weights with a tokenizer and ChatML template, so servers can chat with it:
    a byte-level BPE of the model's full vocabulary (8192) trained here on seeded text,
    Qwen2's pre-tokenizer split, and <|endoftext|>, <|im_start|>, <|im_end|> as ids 0-2."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        return
    write_qwen2_100m(QWEN2)
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.exists(weights):
        os.symlink(os.path.join(QWEN2, "model.safetensors"), weights)
    config = json.load(open(os.path.join(QWEN2, "config.json")))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    config.update(bos_token_id=0, eos_token_id=2)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": 0, "eos_token_id": [2, 0]},
              open(os.path.join(folder, "generation_config.json"), "w"), indent=2)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config["vocab_size"], special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(chat_corpus(), trainer=trainer)
    if tok.get_vocab_size() != config["vocab_size"]:
        sys.exit(f"the tokenizer learned {tok.get_vocab_size()} tokens, not {config['vocab_size']}")
    tok.save(os.path.join(folder, "tokenizer.json"))
    json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
               "add_bos_token": False, "model_max_length": config["max_position_embeddings"],
               "tokenizer_class": "Qwen2Tokenizer", "chat_template": CHATML_TEMPLATE},
              open(os.path.join(folder, "tokenizer_config.json"), "w"), indent=2)
    print(f"wrote {folder} (tokenizer of {tok.get_vocab_size()} tokens)", file=sys.stderr)


GGUF_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k of the llama architecture (convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: str, out: str, half: bool) -> None:
    """The folder's weights as a GGUF llama.cpp loads: llama (SmolLM2) or qwen2 arch."""
    import gguf
    from safetensors.numpy import load_file

    if os.path.exists(out):
        return
    cfg = json.load(open(os.path.join(folder, "config.json")))
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[cfg["architectures"][0]]
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    w = gguf.GGUFWriter(out, arch)
    w.add_name(os.path.basename(folder))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)
    tok = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tok):
        # Byte-level BPE: SmolLM2 with llama.cpp's "smollm" pre-tokenizer, the chat Qwen2
        # with "qwen2" (the split write_qwen2_chat gives it).
        t = json.load(open(tok))
        vocab = sorted(t["model"]["vocab"].items(), key=lambda kv: kv[1])
        specials = {a["content"] for a in t["added_tokens"]}
        merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
        w.add_token_list([k for k, _ in vocab])
        w.add_token_types([gguf.TokenType.CONTROL if k in specials else gguf.TokenType.NORMAL for k, _ in vocab])
        w.add_token_merges(merges)
        w.add_bos_token_id(cfg["bos_token_id"])
        w.add_eos_token_id(cfg["eos_token_id"])
        # The chat template, so llama.cpp's chat endpoint formats messages as ours does.
        tok_cfg = os.path.join(folder, "tokenizer_config.json")
        template = json.load(open(tok_cfg)).get("chat_template") if os.path.exists(tok_cfg) else None
        if template:
            w.add_chat_template(template)
    else:
        # Random model: no tokenizer; the benchmark feeds token ids.
        w.add_tokenizer_model("none")
        w.add_vocab_size(cfg["vocab_size"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for name, arr in tensors.items():
        arr = arr.astype(np.float32)
        if name in names:
            gname = names[name]
        else:
            _, _, layer, *rest = name.split(".")
            kind = ".".join(rest[:-1])
            gname = f"blk.{layer}.{GGUF_BLOCK[kind]}.{rest[-1]}"
            if arch == "llama" and kind == "self_attn.q_proj":
                arr = permute(arr, cfg["num_attention_heads"])
            if arch == "llama" and kind == "self_attn.k_proj":
                arr = permute(arr, cfg["num_key_value_heads"])
        if half and arr.ndim == 2:
            arr = arr.astype(np.float16)
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}", file=sys.stderr)


# ---------------------------------------------------------------- engines

def run_generate(args, threads):
    """Our `generate` bench with `args` on `threads` threads: its JSON result line."""
    cmd = ["cargo", "bench", "-q", "-p", "kubeswift-runtime", "--bench", "generate", "--", *args]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_kubeswift(folder, dtype, batch, prompt, new, threads):
    r = run_generate(["--model", folder, "--dtype", dtype, "--batch", str(batch),
                      "--prompt", str(prompt), "--new", str(new)], threads)
    STREAMED_BYTES[(folder, dtype)] = r["streamed_bytes"]
    return r["prefill_tok_s"], r["decode_tok_s"]


# Weight bytes one batch-1 decode step reads, per (folder, dtype), as our bench reports them
# (every weight but an untied input embedding, of which a step reads one row).
STREAMED_BYTES = {}


def read_bandwidth(threads):
    """GB/s the machine's --threads threads read: the better of a plain sum and our decode
    kernel (whose software prefetch sometimes gets more out of the memory than the plain
    loop's hardware prefetch)."""
    r = run_generate(["--read-bandwidth"], threads)
    print(f"read bandwidth: {r['read_gb_s']:.1f} GB/s plain, {r['decode_kernel_gb_s']:.1f} GB/s "
          "through the decode kernel", file=sys.stderr, flush=True)
    return max(r["read_gb_s"], r["decode_kernel_gb_s"])


def bench_transformers(folder, dtype, batch, prompt, new, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    best_p, best_d = float("inf"), float("inf")
    with torch.no_grad():
        warm = torch.randint(0, vocab, (batch, 8), generator=g)
        model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=2, do_sample=False, pad_token_id=0)
        for _ in range(2):
            ids = torch.randint(0, vocab, (batch, prompt), generator=g)
            mask = torch.ones_like(ids)
            t0 = time.perf_counter()
            model(ids, attention_mask=mask, use_cache=True)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=new + 1, min_new_tokens=new + 1,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
            total = time.perf_counter() - t0
            best_p = min(best_p, prefill)
            best_d = min(best_d, max(total - prefill, 1e-9))
    return batch * prompt / best_p, batch * new / best_d


def bench_llamacpp(gguf_path, batch, prompt, new, threads):
    import llama_cpp as L

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(gguf_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx = ((batch * (prompt + new + 8)) + 255) // 256 * 256
    cp.n_batch = batch * prompt
    cp.n_ubatch = batch * prompt
    cp.n_seq_max = batch
    cp.n_threads = threads
    cp.n_threads_batch = threads
    if hasattr(cp, "kv_unified"):
        cp.kv_unified = True
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    rng = np.random.default_rng(0)
    big = L.llama_batch_init(batch * prompt, 0, batch)
    small = L.llama_batch_init(batch, 0, batch)

    def fill(b, entries):
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i] = int(tok)
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)

    def argmax_rows(rows):
        out = []
        for i in rows:
            ptr = L.llama_get_logits_ith(ctx, i)
            out.append(int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(vocab,)))))
        return out

    def run(p, n):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        toks = rng.integers(0, vocab, size=(batch, p))
        fill(big, [(toks[s, i], i, s, i == p - 1) for s in range(batch) for i in range(p)])
        t0 = time.perf_counter()
        if L.llama_decode(ctx, big) != 0:
            raise RuntimeError("llama_decode (prefill) failed")
        nxt = argmax_rows([s * p + p - 1 for s in range(batch)])
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(n):
            fill(small, [(nxt[s], p + step, s, True) for s in range(batch)])
            if L.llama_decode(ctx, small) != 0:
                raise RuntimeError("llama_decode (decode) failed")
            nxt = argmax_rows(range(batch))
        return prefill, time.perf_counter() - t0

    run(8, 2)
    best_p, best_d = float("inf"), float("inf")
    for _ in range(2):
        p, d = run(prompt, new)
        best_p, best_d = min(best_p, p), min(best_d, d)
    L.llama_batch_free(big)
    L.llama_batch_free(small)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return batch * prompt / best_p, batch * new / best_d


# ---------------------------------------------------------------- table

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="turns per engine; the best is kept")
    ap.add_argument("--models", default="SmolLM2-135M,Qwen2-100M")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--engines", default="kubeswift,transformers,llama.cpp")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--write-gguf", nargs=2, metavar=("FOLDER", "OUT"),
                    help="only write FOLDER's weights as an f32 GGUF (bench_serve.py uses it)")
    ap.add_argument("--write-qwen2-chat", metavar="FOLDER",
                    help="only write the ~100M Qwen2 with a tokenizer to FOLDER (bench_serve.py uses it)")
    args = ap.parse_args()
    if args.write_gguf:
        write_gguf(*args.write_gguf, half=False)
        return
    if args.write_qwen2_chat:
        write_qwen2_chat(args.write_qwen2_chat)
        return

    write_qwen2_100m(QWEN2)
    engines = args.engines.split(",")
    rows = []
    ceiling = 0.0
    for name in args.models.split(","):
        folder = FOLDERS[name]
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            sys.exit(f"{folder} is missing (SmolLM2: run scripts/fixtures/fetch_smollm2.sh)")
        for dtype in args.dtypes.split(","):
            gguf_path = os.path.join(CACHE, f"{name}-{'f16' if dtype == 'bf16' else 'f32'}.gguf")
            if "llama.cpp" in engines:
                write_gguf(folder, gguf_path, half=dtype == "bf16")
            for batch in map(int, args.batches.split(",")):
                # The VM's memory speed drifts with its neighbours: probe beside every row.
                ceiling = max(ceiling, read_bandwidth(args.threads))
                row = {"model": name, "dtype": dtype, "batch": batch}
                # Engines take turns for --rounds rounds and keep their best, so a burst of
                # load on a shared machine does not favour whichever engine ran when it was quiet.
                for _ in range(args.rounds):
                    for engine in engines:
                        if engine == "kubeswift":
                            r = bench_kubeswift(folder, dtype, batch, args.prompt, args.new, args.threads)
                        elif engine == "transformers":
                            r = bench_transformers(folder, dtype, batch, args.prompt, args.new, args.threads)
                        else:
                            r = bench_llamacpp(gguf_path, batch, args.prompt, args.new, args.threads)
                        best = row.get(engine, {"prefill": 0.0, "decode": 0.0})
                        row[engine] = {"prefill": max(best["prefill"], r[0]), "decode": max(best["decode"], r[1])}
                        print(f"{name} {dtype} b{batch} {engine}: prefill {r[0]:.0f} tok/s, decode {r[1]:.1f} tok/s",
                              file=sys.stderr, flush=True)
                rows.append(row)
    ceiling = max(ceiling, read_bandwidth(args.threads))
    print_table(rows, engines, args)
    print_bandwidth(rows, engines, ceiling)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def print_table(rows, engines, args):
    print(f"\nprompt {args.prompt} tokens, {args.new} new tokens, {args.threads} threads, best of {args.rounds} "
          "rounds; tokens/s (llama.cpp's bf16 rows run an f16 GGUF)\n")
    head = "| model | dtype | batch | " + " | ".join(f"{e} prefill | {e} decode" for e in engines)
    ratios = "kubeswift" in engines and len(engines) > 1
    if ratios:
        head += " | " + " | ".join(f"decode vs {e}" for e in engines if e != "kubeswift")
    print(head + " |")
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = [r["model"], r["dtype"], str(r["batch"])]
        for e in engines:
            cells += [f"{r[e]['prefill']:.0f}", f"{r[e]['decode']:.1f}"]
        if ratios:
            cells += [f"{r['kubeswift']['decode'] / r[e]['decode']:.2f}x" for e in engines if e != "kubeswift"]
        print("| " + " | ".join(cells) + " |")


def print_bandwidth(rows, engines, ceiling):
    print(f"\nbatch-1 decode against memory bandwidth: this machine reads {ceiling:.1f} GB/s on these "
          "threads (best of the probes beside every row); GB/s = decode tokens/s x the weight bytes a "
          "step reads\n")
    head = "| model | dtype | MB read a step | " + " | ".join(f"{e} GB/s" for e in engines)
    if "transformers" in engines:
        head += " | 3x transformers needs"
    print(head + " |")
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        size = STREAMED_BYTES.get((FOLDERS[r["model"]], r["dtype"]))
        if r["batch"] != 1 or size is None:
            continue
        cells = [r["model"], r["dtype"], f"{size / 1e6:.0f}"]
        for e in engines:
            gb = r[e]["decode"] * size / 1e9
            cells.append(f"{gb:.1f} ({gb / ceiling:.0%})")
        if "transformers" in engines:
            need = 3 * r["transformers"]["decode"] * size / 1e9
            cells.append(f"{need:.1f} ({need / ceiling:.0%})")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
