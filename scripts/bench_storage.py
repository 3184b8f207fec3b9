"""Times kubeswift's storage layer next to boto3 and the AWS CLI on one S3 server.

Run through scripts/bench-storage, which starts the server and exports AWS_* for it.
Each tool downloads the same model folder into an empty folder and uploads the same
checkpoint folder; every number is the best of --repeat runs.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig


def make_model(folder, size_mb):
    """A model-shaped folder: two big shards, an index, config and tokenizer files."""
    os.makedirs(folder, exist_ok=True)
    shard = size_mb * (1 << 20) // 2
    for i in (1, 2):
        with open(os.path.join(folder, f"model-0000{i}-of-00002.safetensors"), "wb") as f:
            left = shard
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
    for name, size in (("config.json", 700), ("model.safetensors.index.json", 30_000),
                       ("tokenizer.json", 7_000_000), ("tokenizer_config.json", 7_000)):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(os.urandom(size))


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def s3_client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def boto3_download(bucket, prefix, dest):
    s3 = s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]]
    config = TransferConfig()  # boto3 defaults: 8 MB parts, 10 threads per file

    def one(key):
        path = os.path.join(dest, key[len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path, Config=config)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, keys))


def boto3_upload(bucket, src, prefix):
    s3 = s3_client()
    files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]

    def one(path):
        s3.upload_file(path, bucket, prefix + "/" + os.path.relpath(path, src), Config=TransferConfig())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, files))


def timed(fn, repeat):
    best = None
    for i in range(repeat):
        seconds = fn(i)
        best = seconds if best is None else min(best, seconds)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--aws", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--size-mb", type=int, default=320)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    work = tempfile.mkdtemp(prefix="kubeswift-bench-")
    try:
        model = os.path.join(work, "model")
        make_model(model, a.size_mb)
        total = folder_bytes(model)
        subprocess.run([a.aws, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet",
                        model, f"s3://{a.bucket}/bench/model"], check=True)

        def fresh(name, i):
            d = os.path.join(work, f"{name}-{i}")
            shutil.rmtree(d, ignore_errors=True)
            return d

        def run_wall(cmd):
            start = time.perf_counter()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{cmd[0]} exited {r.returncode}: {r.stderr.strip()[-300:]}")
            return time.perf_counter() - start

        def ours_download(i):
            # Process wall time, like the CLI rows (includes start-up and listing).
            return run_wall([a.ours, "download", f"s3://{a.bucket}/bench/model", fresh("ours-dl", i)])

        def boto_download(i):
            start = time.perf_counter()
            boto3_download(a.bucket, "bench/model", fresh("boto-dl", i))
            return time.perf_counter() - start

        def aws_download(i):
            return run_wall([a.aws, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet",
                             f"s3://{a.bucket}/bench/model", fresh("aws-dl", i)])

        def ours_upload(i):
            return run_wall([a.ours, "upload", model, f"s3://{a.bucket}/bench/up-ours-{i}"])

        def boto_upload(i):
            start = time.perf_counter()
            boto3_upload(a.bucket, model, f"bench/up-boto-{i}")
            return time.perf_counter() - start

        def aws_upload(i):
            return run_wall([a.aws, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet",
                             model, f"s3://{a.bucket}/bench/up-aws-{i}"])

        rows = []
        for tool, dl, up in (("kubeswift (object_store)", ours_download, ours_upload),
                             ("boto3 TransferConfig()", boto_download, boto_upload),
                             ("aws s3 cp --recursive", aws_download, aws_upload)):
            # One tool failing against the server is reported, not fatal to the others.
            try:
                rows.append((tool, timed(dl, a.repeat), timed(up, a.repeat)))
            except RuntimeError as e:
                print(f"{tool}: failed: {e}", file=sys.stderr)
                rows.append((tool, None, None))

        mb = total / 1e6
        print(f"\nmodel folder: {mb:.0f} MB in 6 files; server: s3s-fs on 127.0.0.1; "
              f"best of {a.repeat}; {os.cpu_count()} CPUs")
        print(f"{'tool':<26} {'download s':>10} {'MB/s':>8} {'upload s':>9} {'MB/s':>8}")
        for tool, d, u in rows:
            if d is None:
                print(f"{tool:<26} {'failed':>10}")
                continue
            print(f"{tool:<26} {d:>10.2f} {mb / d:>8.0f} {u:>9.2f} {mb / u:>8.0f}")
        print("kubeswift's upload also computes SHA-256 of every file for the checkpoint manifest.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
