#!/usr/bin/env bash
# The GPU checks, on a GPU host with no Rust toolchain and no network (the device machine):
# run from the repository root with .cache/gpu-bundle (scripts/gpu-bundle) beside it.
#   1. the kernels' GPU tests: every op on the GPU against the CPU, values and gradients;
#   2. a short LoRA run of the tiny fixture model on the GPU and on the CPU (same binary,
#      CUDA_VISIBLE_DEVICES="" for the CPU): the loss curves must agree;
#   3. NCCL: a one-rank communicator on the GPU (the runtime's ignored unit test); with two
#      or more GPUs, NPROC_PER_NODE=2 with --ddp_backend nccl against the same run over the
#      CPU ring (gloo) and against one process with the same global batch (issue 8);
#   4. scripts/bench/gpu_train.py: LoRA SFT tokens/s and MFU beside PyTorch + PEFT, decode
#      beside HF generate (skip with GPU_CHECK_BENCH=0).
# Writes logs and results under $OUT (default /tmp/gpu-check); prints a report last.
# The CUDA libraries come from the host's python3 packages (PyTorch's nvidia-* wheels) and
# the driver; nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${GPU_BUNDLE:-.cache/gpu-bundle}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT" "$OUT/bin"
report="$OUT/report.md"
: > "$report"
say() { echo "$*" | tee -a "$report"; }

xz -dc "$B/swift.xz" > "$OUT/bin/swift" && xz -dc "$B/gpu-tests.xz" > "$OUT/bin/gpu-tests" \
    && xz -dc "$B/runtime-tests.xz" > "$OUT/bin/runtime-tests" \
    || { echo "gpu-check: no bundle at $B (run scripts/gpu-bundle on the build machine)" >&2; exit 2; }
chmod +x "$OUT/bin/"*
# Every lib/ folder of the nvidia-* wheels (libcublas, libcurand, libnvrtc, libnccl, ...).
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib"), recursive=True):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
# The driver's libcuda: on the loader's path on most hosts; some images mount it here.
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say "# gpu-check $(cat "$B/commit" 2>/dev/null) on $(nvidia-smi -L 2>/dev/null | head -1)"
say "driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1); torch $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)"
status=0

say ""
say "## 1. kernel tests (GPU vs CPU)"
if "$OUT/bin/gpu-tests" --include-ignored --test-threads 1 > "$OUT/gpu-tests.log" 2>&1; then
    say "pass: $(grep -E '^test result' "$OUT/gpu-tests.log" | tail -1)"
else
    status=1
    say "FAIL:"; grep -E "^test .* FAILED|panicked|error" "$OUT/gpu-tests.log" | head -20 | tee -a "$report"
fi

say ""
say "## 2. LoRA loss curve, GPU vs CPU (tiny Qwen2.5, 10 steps)"
train() {  # $1: run name; rest: env assignments
    local name=$1; shift
    env NPROC_PER_NODE=1 "$@" "$OUT/bin/swift" sft --model runtime/tests/fixtures/models/tiny-Qwen2.5 \
        --dataset examples/data/self_cognition.jsonl --model_name Kuby --model_author kubeswift \
        --max_steps 10 --logging_steps 1 --max_length 128 --per_device_train_batch_size 4 \
        --lora_dropout 0 --split_dataset_ratio 0 --save_strategy no --report_to none \
        --seed 42 --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1
}
if train lora-gpu && train lora-cpu CUDA_VISIBLE_DEVICES=; then
    grep -q "computing on GPU" "$OUT/lora-gpu.log" || { status=1; say "FAIL: the GPU run did not use the GPU (see lora-gpu.log)"; }
    python3 - "$OUT" <<'PY' | tee -a "$report" || status=1
import glob, json, sys
out = sys.argv[1]
def losses(name):
    path = glob.glob(f"{out}/{name}/*/logging.jsonl")[0]
    return [json.loads(l)["loss"] for l in open(path) if '"loss"' in l and "global_step" in l]
gpu, cpu = losses("lora-gpu"), losses("lora-cpu")
worst = max(abs(g - c) / max(abs(c), 1e-6) for g, c in zip(gpu, cpu))
print("| step | GPU loss | CPU loss |\n|---|---|---|")
for i, (g, c) in enumerate(zip(gpu, cpu), 1):
    print(f"| {i} | {g:.5f} | {c:.5f} |")
ok = len(gpu) == len(cpu) == 10 and worst <= 1e-3
print(f"{'pass' if ok else 'FAIL'}: largest relative difference {worst:.2e} (tolerance 1e-3, f32)")
sys.exit(0 if ok else 1)
PY
else
    status=1
    say "FAIL: a training run failed:"; tail -5 "$OUT"/lora-*.log | tee -a "$report"
fi

say ""
say "## 3. NCCL"
if "$OUT/bin/runtime-tests" dist::nccl --include-ignored --test-threads 1 > "$OUT/nccl-tests.log" 2>&1; then
    say "pass (one-rank communicator): $(grep -E '^test result' "$OUT/nccl-tests.log" | tail -1)"
else
    status=1
    say "FAIL:"; grep -E "^test .* FAILED|panicked|error" "$OUT/nccl-tests.log" | head -20 | tee -a "$report"
fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$gpus" -ge 2 ]; then
    ddp() {  # $1: run name, $2: per-device batch, $3: workers, $4: --ddp_backend
        local name=$1 batch=$2 workers=$3 backend=$4
        # NPROC_PER_NODE is explicit: on a GPU node it would default to the GPU count.
        env MASTER_PORT=29517 NPROC_PER_NODE="$workers" "$OUT/bin/swift" sft \
            --model runtime/tests/fixtures/models/tiny-Qwen2.5 \
            --dataset examples/data/self_cognition.jsonl --model_name Kuby --model_author kubeswift \
            --max_steps 6 --save_steps 6 --logging_steps 1 --max_length 128 \
            --per_device_train_batch_size "$batch" --gradient_accumulation_steps 2 \
            --lora_dropout 0 --split_dataset_ratio 0 --report_to none --seed 7 \
            --average_tokens_across_devices true --ddp_timeout 60 --add_version false \
            --ddp_backend "$backend" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1
    }
    if ddp ddp-nccl 2 2 nccl && ddp ddp-gloo 2 2 gloo && ddp ddp-one 4 1 gloo; then
        grep -q "NCCL communicator ready" "$OUT/ddp-nccl.log" || { status=1; say "FAIL: the nccl run did not use NCCL (see ddp-nccl.log)"; }
        python3 - "$OUT" <<'PY' | tee -a "$report" || status=1
import json, struct, sys
import numpy as np
out = sys.argv[1]
def tensors(name):
    raw = open(f"{out}/{name}/checkpoint-6/adapter_model.safetensors", "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    return {k: np.frombuffer(body[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32)
            for k, v in header.items() if k != "__metadata__"}
nccl, gloo, one = tensors("ddp-nccl"), tensors("ddp-gloo"), tensors("ddp-one")
def worst(a, b):
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30)) for k in b)
vs_gloo, vs_one = worst(nccl, gloo), worst(nccl, one)
# Two ranks: a + b is the same float in either order, so NCCL and the ring agree to the
# bit unless the GPU's own kernels are not deterministic run to run.
ok = sorted(nccl) == sorted(gloo) == sorted(one) and vs_gloo <= 1e-6 and vs_one <= 1e-5
print(f"{'pass' if ok else 'FAIL'}: 2 ranks over NCCL vs the CPU ring: largest relative difference {vs_gloo:.2e} (expected 0, tolerance 1e-6); "
      f"vs 1 process with batch 4: {vs_one:.2e} (tolerance 1e-5)")
sys.exit(0 if ok else 1)
PY
    else
        status=1
        say "FAIL: a data-parallel run failed:"; tail -5 "$OUT"/ddp-*.log | tee -a "$report"
    fi
else
    say "skipped: the NCCL equivalence run needs two GPUs (this host has $gpus; NCCL refuses two ranks on one GPU)"
fi

if [ "${GPU_CHECK_BENCH:-1}" = 1 ]; then
    say ""
    say "## 4. benchmark beside PyTorch + PEFT"
    python3 scripts/bench/gpu_train.py --ours "$OUT/bin/swift" --work "$OUT/bench" \
        --json "$OUT/bench.json" 2>"$OUT/bench.err" | tee -a "$report" || { status=1; tail -20 "$OUT/bench.err"; }
fi
echo
cat "$report"
exit $status
