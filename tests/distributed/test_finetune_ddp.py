"""Multi-process fine-tuning over gloo: 2 processes give what 1 process gives with the same global
batch, with the layer cache (each process fills its share) and with a trainable biLM."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_OVERRIDES, best_weights, finetune_f32_bounds, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=51)  # its serial seconds: conftest starts the slowest first

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# no dropout anywhere: the processes draw no random numbers that one process would draw differently
EXACT = ["classifier.dropout=0", "train.epochs=3", "train.batch_size=10", "train.patience=3", "train.device=cpu",
         "classifier.token_dim=16", "classifier.hidden_dim=16", "baseline=false"]


@pytest.fixture(scope="module")
def bilm(tmp_path_factory, grammar_corpus):
    run = tmp_path_factory.mktemp("ftbilm") / "run"
    run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.max_steps=30", "train.eval_every=0", "model.dropout=0")
    return run


def finetune_args(bilm, data, run_dir, *extra):
    return ["finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={bilm}", f"data.train={data}",
            f"train.run_dir={run_dir}", f"bilm.cache_dir={run_dir}-cache", *EXACT, *extra]


def torchrun2(*args: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29541", "-m", "elmo_dist", *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.parametrize("mode", ["cached", "trainable"])
def test_two_processes_equal_one(mode, bilm, tmp_path):
    data = write_order_task(tmp_path / "task.jsonl", 97, seed=5)  # 97: the last global batch splits unevenly
    extra = ["variants=[scalar_mix,learned_fn]"] if mode == "cached" else \
        ["variants=[scalar_mix]", "bilm.trainable=true", "bilm.lr=0.001"]
    run_cli(*finetune_args(bilm, data, tmp_path / "one", *extra))
    proc = torchrun2(*finetune_args(bilm, data, tmp_path / "two", *extra))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert proc.stdout.count("per-variant reports") == 1  # one writer
    for variant, a in one["variants"].items():
        b = two["variants"][variant]
        assert b["best_epoch"] == a["best_epoch"]
        wa = best_weights(tmp_path / "one" / variant)
        wb = best_weights(tmp_path / "two" / variant)
        # at most 3 epochs x 10 batches (97 documents, 10 a batch); finetune_f32_bounds says where they come from
        atol, rtol = finetune_f32_bounds(bilm, wa, 30, variant, mode == "trainable", n_docs=97)
        assert wa.keys() == wb.keys()
        for name in wa:
            torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=atol, msg=name)
        for split in ("train", "test"):
            assert b[split]["accuracy"] == a[split]["accuracy"]
            assert b[split]["confusion_matrix"] == a[split]["confusion_matrix"]
            assert b[split]["loss"] == pytest.approx(a[split]["loss"], rel=rtol, abs=0), (split, rtol)
    if mode == "cached":  # each process filled its own shard of every split's cache
        metas = [json.loads(p.read_text()) for p in (tmp_path / "two-cache").glob("*/meta.json")]
        assert len(metas) == 3 and all(len(m["shards"]) == 2 for m in metas)
