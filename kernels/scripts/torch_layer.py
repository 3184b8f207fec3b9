#!/usr/bin/env python3
"""PyTorch peer of kernels/benches/layer: one Qwen2-style decoder layer with LoRA on all
seven linears (frozen base weights, trainable f32 adapters, as PEFT builds them), timed
forward and backward on the CPU.

The layer mirrors transformers' Qwen2DecoderLayer with SDPA attention (RMSNorm in f32,
rotate_half rope, causal GQA `scaled_dot_product_attention`, SiLU-gated MLP).

Run by `cargo bench -p kubeswift-kernels --bench layer`, which passes the same sizes and
prints one table; standalone: `python torch_layer.py --tokens 256 --iters 10`. Prints one
JSON object per dtype on stdout.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


class Lora(torch.nn.Module):
    def __init__(self, inp, out, rank, alpha, bias, dtype):
        super().__init__()
        self.base = torch.nn.Linear(inp, out, bias=bias, dtype=dtype)
        self.base.requires_grad_(False)
        self.lora_A = torch.nn.Linear(inp, rank, bias=False, dtype=torch.float32)
        self.lora_B = torch.nn.Linear(rank, out, bias=False, dtype=torch.float32)
        torch.nn.init.normal_(self.lora_B.weight, std=0.02)
        self.scale = alpha / rank

    def forward(self, x):
        # PEFT: base in the input dtype, adapter in its own (f32) dtype, result cast back.
        y = self.base(x)
        up = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scale
        return y + up.to(x.dtype)


def rms_norm(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Layer(torch.nn.Module):
    def __init__(self, a, dtype):
        super().__init__()
        h, hd = a.hidden, a.head_dim
        q, kv = a.heads * hd, a.kv_heads * hd
        self.a = a
        self.ln1 = torch.nn.Parameter(torch.ones(h, dtype=dtype), requires_grad=False)
        self.ln2 = torch.nn.Parameter(torch.ones(h, dtype=dtype), requires_grad=False)
        mk = lambda i, o, b: Lora(i, o, a.rank, a.alpha, b, dtype)
        self.q, self.k, self.v = mk(h, q, True), mk(h, kv, True), mk(h, kv, True)
        self.o = mk(q, h, False)
        self.gate, self.up, self.down = mk(h, a.intermediate, False), mk(h, a.intermediate, False), mk(a.intermediate, h, False)
        inv = 1.0 / (a.theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(a.tokens, dtype=torch.float32), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos().to(dtype))
        self.register_buffer("sin", emb.sin().to(dtype))

    def forward(self, x):
        a = self.a
        b, t, _ = x.shape
        h = rms_norm(x, self.ln1, 1e-6)
        q = self.q(h).view(b, t, a.heads, a.head_dim).transpose(1, 2)
        k = self.k(h).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
        v = self.v(h).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
        cos, sin = self.cos[:t], self.sin[:t]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b, t, a.heads * a.head_dim)
        x = x + self.o(o)
        h = rms_norm(x, self.ln2, 1e-6)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def gemm(a):
    """GFLOP/s of `F.linear(x, w)` (C[m, n] = A[m, k] B[n, k]^T, no bias) at the layer's
    shapes: the product both engines spend most of a training step in."""
    t, h, i, kv = a.tokens, a.hidden, a.intermediate, a.kv_dim
    for m, n, k in [(t, i, h), (t, h, i), (t, h, h), (t, kv, h)]:
        for name in a.dtypes.split(","):
            dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
            x = torch.randn(m, k, dtype=dtype)
            w = torch.randn(n, k, dtype=dtype)
            times = []
            with torch.no_grad():
                for j in range(a.warmup + a.iters):
                    t0 = time.perf_counter()
                    F.linear(x, w)
                    if j >= a.warmup:
                        times.append(time.perf_counter() - t0)
            print(json.dumps({
                "impl": f"pytorch {torch.__version__.split('+')[0]}",
                "gemm": [m, n, k],
                "dtype": name,
                "gflops": 2.0 * m * n * k / statistics.median(times) / 1e9,
                # Best of the runs: on a VM whose speed drifts over seconds, the figure
                # that compares two engines timed one after the other.
                "gflops_best": 2.0 * m * n * k / min(times) / 1e9,
            }), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="f32,bf16")
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=2)
    p.add_argument("--head-dim", dest="head_dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--kv-dim", dest="kv_dim", type=int, default=128,
                   help="k/v projection width for --gemm (kv heads x head dim)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--theta", type=float, default=1e6)
    p.add_argument("--gemm", action="store_true",
                   help="time the layer's forward GEMMs (F.linear) instead of the layer")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.gemm:
        gemm(a)
        return
    for name in a.dtypes.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
        layer = Layer(a, dtype)
        x = torch.randn(1, a.tokens, a.hidden, dtype=dtype, requires_grad=True)
        fwd, bwd = [], []
        for i in range(a.warmup + a.iters):
            t0 = time.perf_counter()
            y = layer(x)
            t1 = time.perf_counter()
            y.backward(torch.ones_like(y))
            t2 = time.perf_counter()
            x.grad = None
            layer.zero_grad(set_to_none=True)
            if i >= a.warmup:
                fwd.append((t1 - t0) * 1e3)
                bwd.append((t2 - t1) * 1e3)
        print(json.dumps({
            "impl": f"pytorch {torch.__version__.split('+')[0]}",
            "dtype": name,
            "forward_ms": statistics.median(fwd),
            "backward_ms": statistics.median(bwd),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }), flush=True)


if __name__ == "__main__":
    main()
