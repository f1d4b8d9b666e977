"""Shared test helpers: a generated corpus with learnable structure, and a CLI runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Without CUDA, Triton kernels (the clipped cell's) run under Triton's interpreter. Triton reads the
# setting when it is first imported, which no test has done yet when this file loads; subprocesses
# inherit it. With CUDA it stays unset, and tests/gpu/ runs the kernels compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The slowest test files, slowest first (serial wall time). `make test` runs each file whole on one of
# two workers (pytest -n 2 --dist loadfile --no-loadscope-reorder), handing out files in collection
# order: starting the long ones first keeps one worker from being left alone with a long file at the end.
# A stale list costs only time.
SLOWEST_FIRST = [
    "tests/distributed/test_ddp.py", "tests/reliability/test_kill_anywhere.py", "tests/slurm/test_slurm.py",
    "tests/distributed/test_zero.py", "tests/reliability/test_real_run_faults.py",
    "tests/integration/test_benchmarks.py", "tests/integration/test_submit_local.py",
    "tests/integration/test_run_layouts.py", "tests/reliability/test_bad_input.py",
    "tests/integration/test_finetune.py", "tests/reliability/test_nan_guard.py",
    "tests/integration/test_finetune_options.py", "tests/interop/test_elmo_format.py",
    "tests/integration/test_pretrain.py", "tests/distributed/test_finetune_ddp.py",
    "tests/reliability/test_security.py",
]


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


def write_grammar_corpus(path: Path, n_lines: int, seed: int = 0) -> Path:
    """Sentences from a small grammar: the next word is predictable, the unigram model is not."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "the old man", "my friend", "the bird", "a small child", "the teacher"]
    verb = ["sees", "likes", "eats", "finds", "wants", "hears", "paints"]
    obj = ["the fish", "a red ball", "the tall tree", "some bread", "the house", "a book", "the river"]
    tail = ["today", "quickly", "again", "at night", "very slowly", "in the morning"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            s = f"{subj[rng.integers(7)]} {verb[rng.integers(7)]} {obj[rng.integers(7)]}"
            if rng.random() < 0.6:
                s += " " + tail[rng.integers(6)]
            f.write(s + " .\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None):
    """Run `python -m elmo_dist ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "elmo_dist", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"elmo-dist {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def grammar_corpus(tmp_path_factory) -> Path:
    """A prepared corpus (about 60k words) shared by the integration tests."""
    d = tmp_path_factory.mktemp("grammar")
    write_grammar_corpus(d / "corpus.txt", 12000)
    run_cli("prepare", str(d / "corpus.txt"), "--out", str(d / "prepared"), "--heldout-fraction", "0.05")
    return d / "prepared"


TINY_OVERRIDES = [
    "model.lstm_dim=64", "model.projection_dim=32", "model.filters=[[1,8],[2,8],[3,16]]",
    "model.n_negative_samples=16", "data.batch_size=16", "data.unroll_steps=10",
    "data.eval_batch_size=32", "train.device=cpu", "logging.log_every=10",
]


@pytest.fixture(scope="session")
def tiny_bilm(tmp_path_factory, grammar_corpus) -> Path:
    """A tiny biLM pretrained on the grammar corpus, shared by the downstream tests."""
    run = tmp_path_factory.mktemp("bilm") / "run"
    run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.max_steps=120", "train.eval_every=0", "optim.name=adam", "optim.lr=0.01")
    return run


ANIMALS = ["cat", "dog", "bird", "fish"]


def order_task_sentence(rng, first: str, second: str) -> str:
    """'the cat sees the fish ...': the label is which animal comes first, so the bag of words
    says nothing and only context (word order) decides."""
    verbs = ["sees", "likes", "finds", "hears"]
    tail = ["today", "again", "at night", "quickly"]
    return f"the {first} {verbs[rng.integers(4)]} the {second} {tail[rng.integers(4)]} ."


def write_order_task(path, n, seed):
    """A JSONL task: label = which of two animals is the subject (same words in both classes)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = ("cat", "fish") if rng.random() < 0.5 else ("fish", "cat")
            f.write(json.dumps({"text": order_task_sentence(rng, a, b), "label": f"{a}_first"}) + "\n")
    return path
