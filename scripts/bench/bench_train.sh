#!/usr/bin/env bash
# Training benchmark: kubeswift `swift sft` vs ms-swift `swift sft` (LoRA r8 all-linear on a
# random ~100M Qwen2, batch 8 x 256 tokens, f32 and bf16, gradient checkpointing on and off);
# prints the table and both loss curves. Installs ms-swift (and torch, which it pulls in) into
# the ignored .venv/bench-train on first use; MS_SWIFT=/path/to/swift uses an existing one.
# Builds the release `swift`. Extra arguments go to bench_train.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${MS_SWIFT:-}" ]]; then
    venv=.venv/bench-train
    if [[ ! -x "$venv/bin/swift" ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet ms-swift
    fi
    MS_SWIFT="$venv/bin/swift"
fi
PYTHON="$(dirname "$MS_SWIFT")/python"
cargo build --release -p kubeswift-runtime --bin swift
exec "$PYTHON" scripts/bench/bench_train.py --ours target/release/swift --ms-swift "$MS_SWIFT" "$@"
