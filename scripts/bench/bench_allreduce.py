#!/usr/bin/env python3
"""All-reduce bandwidth of torch.distributed's gloo backend over loopback: the reference
for kubeswift's CPU ring (`cargo bench -p kubeswift-runtime --bench ring_allreduce`).

    python scripts/bench/bench_allreduce.py --mb 100 --repeat 5

Needs torch (pip install torch). Prints the same table as the Rust bench: median time of
one all-reduce of `mb` MB of f32 (the slowest rank's), algorithm and bus bandwidth.
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, numel, repeat, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    buf = torch.full((numel,), 1.0 + rank)
    times = []
    for _ in range(repeat):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t)
    out[rank] = times
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    numel = a.mb * 1_000_000 // 4
    print("| ranks | MB | ms per all-reduce | algbw GB/s | busbw GB/s |")
    print("|------:|---:|------------------:|-----------:|-----------:|")
    for world in (2, 4):
        out = mp.Manager().dict()
        mp.spawn(worker, args=(world, free_port(), numel, a.repeat, out), nprocs=world)
        slowest = [max(out[r][i] for r in range(world)) for i in range(a.repeat)]
        s = statistics.median(slowest)
        algbw = numel * 4 / s / 1e9
        busbw = algbw * 2 * (world - 1) / world
        print(f"| {world} | {a.mb} | {s * 1e3:.1f} | {algbw:.2f} | {busbw:.2f} |")


if __name__ == "__main__":
    main()
