#!/usr/bin/env python3
"""Serving benchmark of `swift deploy`: aggregate generated tokens/s and p50/p99 time to
first token at 1, 4 and 16 concurrent streaming clients, printed as a table.

Starts the server itself (SWIFT binary, release build by default) on an ephemeral port
over SmolLM2-135M-Instruct (scripts/fixtures/fetch_smollm2.sh puts it in .cache/models),
or --model, or (--qwen2-100m) the random ~100M Qwen2 of bench_infer.py with a byte-level BPE
of its full vocabulary and a ChatML template that script trains for it. Each client sends --requests-per-client streaming chat requests back to back
(greedy, --new tokens, a prompt of about --prompt words); time to first token is measured
to the first chunk with text. Standard library only.

With --system N every request starts with the same N-word system prompt (what prefix
caching is for); --server-args passes more `swift deploy` arguments, e.g.
--server-args="--enable_prefix_caching true" to measure prefix caching against the same
run without it.

With --adapters NAME=PATH ... the server holds those LoRA adapters too (multi-LoRA) and
client i asks for model i mod (1 + adapters): the base model and every adapter share the
batches. Any PEFT adapter of the model works (a `swift sft` checkpoint, or PEFT's).

Peers, run in the same invocation with the same clients, one server at a time:
--msswift PATH is ms-swift's `swift` command (`swift deploy --infer_backend transformers`,
f32, same max batch size); --llamacpp-python PY with --gguf FILE is llama.cpp's server
(`PY -m llama_cpp.server`, PyPI llama-cpp-python[server]) on an f32 GGUF of the same
model, written by bench_infer.py's converter with PY (it needs gguf, numpy, safetensors)
unless --gguf names one.

    python scripts/bench/bench_serve.py [--swift target/release/swift] [--new 64]
        [--adapters a=path/to/checkpoint b=path/to/other]
        [--msswift venv/bin/swift] [--llamacpp-python venv/bin/python [--gguf model.gguf]]
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SMOLLM2 = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct")


def start_server(swift, model, batch, adapters, server_args=()):
    extra = ["--adapters", *adapters] if adapters else []
    extra += list(server_args)
    proc = subprocess.Popen(
        [swift, "deploy", "--model", model, "--host", "127.0.0.1", "--port", "0",
         "--max_batch_size", str(batch), "--verbose", "false", "--log_interval", "-1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = proc.stdout.readline()
    m = re.search(r"http://([0-9.]+):(\d+)", line)
    if not m:
        stop(proc)
        sys.exit(f"swift deploy did not start: {line!r}")
    return proc, m.group(1), int(m.group(2))


def stop(proc):
    """Stops a server and everything it started (each runs in its own process group:
    ms-swift's `swift` forks the real server, which would outlive its parent), so the
    next server is measured on an idle machine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, port, what, timeout=600):
    """Polls GET /v1/models until the peer answers (they print no parseable address)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode} before serving")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    stop(proc)
    sys.exit(f"{what} did not answer on port {port} within {timeout} s")


def start_peer(what, cmd, port):
    """Starts a peer server in its own process group and waits until it serves."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_ready(proc, port, what)
    return proc, "127.0.0.1", port


def start_msswift(cli, model, name, batch, extra):
    port = free_port()
    return start_peer("ms-swift deploy", [
        cli, "deploy", "--model", model, "--infer_backend", "transformers",
        "--torch_dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
        "--served_model_name", name, "--max_batch_size", str(batch), "--verbose", "false",
        *extra], port)


def start_llamacpp(python, gguf, name):
    port = free_port()
    return start_peer("llama.cpp server", [
        python, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", name,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
        "--n_threads", str(os.cpu_count()),
        # Its default lets a new request cut off the running one; queue them instead.
        "--interrupt_requests", "false"], port)


SYSTEM = None  # set from --system


def one_request(host, port, model, prompt, new):
    messages = [{"role": "user", "content": prompt}]
    if SYSTEM:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    body = json.dumps({
        "model": model, "messages": messages,
        "max_tokens": new, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    })
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, tokens, chunks = None, None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            if (c.get("delta") or {}).get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    conn.close()
    # A server that ignores stream_options.include_usage: one token per content chunk.
    tokens = chunks if tokens is None else tokens
    return ttft if ttft is not None else time.perf_counter() - t0, tokens


def run_level(host, port, models, clients, per_client, prompt, new):
    ttfts, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(i):
        for j in range(per_client):
            try:
                model = models[i % len(models)]
                t, n = one_request(host, port, model, f"[{i}.{j}] {prompt}", new)
            except Exception as e:  # noqa: BLE001 - reported in the table
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                ttfts.append(t)
                tokens.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(tokens) / wall, ttfts, errors


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def prepare_qwen2_chat(args):
    """Writes the chat Qwen2 with a peer's Python (it needs numpy, safetensors, tokenizers)."""
    folder = os.path.join(ROOT, ".cache", "bench", "Qwen2-100M-chat")
    if os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        return folder  # written last: the folder is complete
    python = args.llamacpp_python or (
        os.path.join(os.path.dirname(args.msswift), "python") if args.msswift else sys.executable)
    subprocess.run([python, os.path.join(ROOT, "scripts", "bench", "bench_infer.py"),
                    "--write-qwen2-chat", folder], check=True)
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swift", default=os.path.join(ROOT, "target", "release", "swift"))
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--qwen2-100m", action="store_true",
                    help="serve the random ~100M Qwen2 of bench_infer.py with a tokenizer and ChatML "
                         "template trained for it (written once to .cache/bench/Qwen2-100M-chat)")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="sweeps over the levels per server; each level reports its fastest")
    ap.add_argument("--prompt", type=int, default=32, help="prompt length in words")
    ap.add_argument("--new", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--adapters", nargs="*", default=[], help="NAME=PATH LoRA adapters to serve")
    ap.add_argument("--system", type=int, default=0, help="shared system prompt length in words")
    ap.add_argument("--server-args", default="", help="more swift deploy arguments")
    ap.add_argument("--msswift", help="ms-swift's `swift` command, to run beside ours")
    # ms-swift has no SmolLM2 entry: its Llama loader, with the tokenizer's own chat template.
    ap.add_argument("--msswift-args", help="more ms-swift deploy arguments (default: its Llama "
                    "loader with the tokenizer's own chat template; with --qwen2-100m, qwen2 and qwen)")
    ap.add_argument("--llamacpp-python", help="a Python with llama-cpp-python[server]")
    ap.add_argument("--gguf", help="an f32 GGUF of the same model for llama.cpp")
    args = ap.parse_args()
    if args.qwen2_100m:
        args.model = prepare_qwen2_chat(args)
    if args.msswift_args is None:
        args.msswift_args = ("--model_type qwen2 --template qwen" if args.qwen2_100m else
                             "--model_type llama --template chatml --template_backend jinja")
    global SYSTEM
    if args.system:
        words = ("You are a helpful assistant for a city tourism office and you answer "
                 "questions about its history, rivers, bridges, museums and parks. ").split()
        SYSTEM = " ".join(words[i % len(words)] for i in range(args.system))
    levels = [int(x) for x in args.levels.split(",")]
    name = os.path.basename(os.path.normpath(args.model))
    models = [name, *(a.split("=", 1)[0] for a in args.adapters)]
    prompt = " ".join(["Tell me about the history of the city and its rivers."] * 8)
    prompt = " ".join(prompt.split()[: args.prompt])
    servers = [("kubeswift", models, lambda: start_server(
        args.swift, args.model, max(levels), args.adapters, args.server_args.split()))]
    if args.msswift:
        servers.append(("ms-swift", [name], lambda: start_msswift(
            args.msswift, args.model, name, max(levels), args.msswift_args.split())))
    if args.llamacpp_python:
        gguf = args.gguf or os.path.join(ROOT, ".cache", "bench", f"{name}-f32.gguf")
        if not args.gguf:
            os.makedirs(os.path.dirname(gguf), exist_ok=True)
            subprocess.run([args.llamacpp_python, os.path.join(ROOT, "scripts", "bench", "bench_infer.py"),
                            "--write-gguf", args.model, gguf], check=True)
        servers.append(("llama.cpp", [name], lambda: start_llamacpp(
            args.llamacpp_python, gguf, name)))
    rows = []
    for server, server_models, start in servers:
        proc, host, port = start()
        try:
            one_request(host, port, name, "warm up", 4)
            # Rounds sweep every level in turn, so a slow spell of a shared machine does not
            # fall on one level only; each level keeps its fastest round.
            best = {}
            for _ in range(args.rounds):
                for c in levels:
                    tps, ttfts, errors = run_level(host, port, server_models, c,
                                                   args.requests_per_client, prompt, args.new)
                    row = (server, c, tps, pct(ttfts, 50), pct(ttfts, 99), len(ttfts), len(errors))
                    if c not in best or tps > best[c][2]:
                        best[c] = row
            rows.extend(best[c] for c in levels)
        finally:
            stop(proc)
    print(f"\nswift deploy {args.server_args}, {name}, {args.new} new tokens, ~{args.prompt}-word prompt, "
          f"{args.system}-word system prompt, best of {args.rounds} round(s), "
          f"{args.requests_per_client} requests per client, {os.cpu_count()} CPUs, "
          f"models {', '.join(models)}")
    print(f"{'server':>10} | {'streams':>7} | {'gen tok/s':>9} | {'TTFT p50 ms':>11} | "
          f"{'TTFT p99 ms':>11} | {'requests':>8} | errors")
    print("-" * 81)
    for server, c, tps, p50, p99, n, e in rows:
        print(f"{server:>10} | {c:>7} | {tps:>9.1f} | {p50 * 1e3:>11.1f} | {p99 * 1e3:>11.1f} | "
              f"{n:>8} | {e}")
    for server, *_ in servers:
        mine = [r for r in rows if r[0] == server]
        base = mine[0][2] if mine and mine[0][2] > 0 else float("nan")
        print(f"\n{server} scaling: " + ", ".join(
            f"{c} streams {tps / base:.2f}x" for _, c, tps, *_ in mine))
    top = max(levels)
    ours = next((r[2] for r in rows if r[0] == "kubeswift" and r[1] == top), None)
    for server, c, tps, *_ in rows:
        if server != "kubeswift" and c == top and ours and tps > 0:
            print(f"kubeswift / {server} at {top} streams: {ours / tps:.2f}x")


if __name__ == "__main__":
    main()
