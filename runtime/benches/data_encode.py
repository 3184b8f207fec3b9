#!/usr/bin/env python3
"""Side by side: ms-swift's dataset loading + encoding vs kubeswift's, on one file.

    python3 runtime/benches/data_encode.py [ROWS]

Uses the template-fixtures virtualenv (ms-swift 3.8.3; created by
runtime/tests/fixtures/templates/generate.py on first use), writes ROWS (default 20000)
conversations to a temporary .jsonl, times ms-swift's `load_dataset` + `EncodePreprocessor`
with the qwen template over the fixture tokenizer at 1 and 2 processes (no HF cache reuse),
then runs `cargo bench --bench data_encode` on the same file and prints one table.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = REPO / 'runtime' / 'tests' / 'fixtures' / 'templates'
VENV_PYTHON = REPO / '.venv' / 'template-fixtures' / 'bin' / 'python'


def ensure_environment():
    # A venv's python links to the base interpreter, so compare prefixes, not executables.
    if Path(sys.prefix).resolve() == VENV_PYTHON.parents[1].resolve() or os.environ.get('_DATA_BENCH_CHILD'):
        return
    if not VENV_PYTHON.exists():
        subprocess.check_call([sys.executable, str(FIXTURES / 'generate.py')])
    env = dict(os.environ, _DATA_BENCH_CHILD='1')
    sys.exit(subprocess.call([str(VENV_PYTHON), str(Path(__file__).resolve())] + sys.argv[1:], env=env))


WORDS = ['the', 'capital', 'of', 'France', 'is', 'Paris', 'model', 'train', 'data', '你好', '世界', 'apple']


def generate(path: Path, rows: int):
    state = 42
    mask = (1 << 64) - 1

    def nxt():
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & mask
        return state >> 33

    def text(n):
        return ' '.join(WORDS[nxt() % len(WORDS)] for _ in range(n))

    with open(path, 'w') as f:
        for _ in range(rows):
            row = {'messages': [
                {'role': 'system', 'content': 'You are a helpful assistant.'},
                {'role': 'user', 'content': text(20)},
                {'role': 'assistant', 'content': text(60)},
                {'role': 'user', 'content': text(15)},
                {'role': 'assistant', 'content': text(40)},
            ]}
            f.write(json.dumps(row, ensure_ascii=False) + '\n')


def ms_swift(path: Path, num_proc: int):
    os.environ['HF_DATASETS_CACHE'] = tempfile.mkdtemp()
    from swift.llm import EncodePreprocessor, get_template, load_dataset
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(str(FIXTURES / 'chatml'))
    tok.model_info = types.SimpleNamespace(config=None, task_type='causal_lm', max_model_len=None, model_dir=None)
    tok.model_meta = types.SimpleNamespace(is_multimodal=False)
    template = get_template('qwen', tok)
    template.set_mode('train')
    start = time.perf_counter()
    train, _ = load_dataset([str(path)], split_dataset_ratio=0., num_proc=num_proc, load_from_cache_file=False)
    encoded = EncodePreprocessor(template=template)(train, num_proc=num_proc, load_from_cache_file=False)
    secs = time.perf_counter() - start
    tokens = sum(len(x) for x in encoded['input_ids'])
    return len(encoded), tokens, secs


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    tmp = Path(tempfile.mkdtemp())
    path = tmp / 'bench.jsonl'
    generate(path, rows)
    lines = ['| implementation | path | threads | rows | tokens | seconds | rows/s | tokens/s |',
             '|---|---|---|---|---|---|---|---|']
    for n in [1, 2]:
        r, t, s = ms_swift(path, n)
        lines.append(f'| ms-swift 3.8.3 | load_dataset+EncodePreprocessor | {n} | {r} | {t} | {s:.3f} | {r / s:.0f} | {t / s:.0f} |')
    out = subprocess.run(['cargo', 'bench', '-q', '-p', 'kubeswift-runtime', '--bench', 'data_encode'],
                         cwd=REPO, env=dict(os.environ, BENCH_DATA_FILE=str(path)), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr)
    lines += [l for l in out.stdout.splitlines() if l.startswith('| kubeswift')]
    print('\n'.join(lines))


if __name__ == '__main__':
    ensure_environment()
    main()
