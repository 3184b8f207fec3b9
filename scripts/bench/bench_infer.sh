#!/usr/bin/env bash
# Inference benchmark: kubeswift vs Hugging Face transformers generate vs llama.cpp, on
# SmolLM2-135M-Instruct and a random ~100M Qwen2, f32 and bf16, batch 1 and 8; prints the
# table. Installs its Python side (torch, transformers, gguf, llama-cpp-python, built from
# source with cmake from PyPI) into the ignored .venv/bench on first use; PYTHON=/path/to/python
# uses an interpreter that already has them. Extra arguments go to bench_infer.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/fixtures/fetch_smollm2.sh
if [[ -z "${PYTHON:-}" ]]; then
    venv=.venv/bench
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet torch transformers safetensors numpy gguf
        CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install --quiet llama-cpp-python
    fi
    PYTHON="$venv/bin/python"
fi
cargo bench -p kubeswift-runtime --bench generate --no-run
exec "$PYTHON" scripts/bench/bench_infer.py "$@"
