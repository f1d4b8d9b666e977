"""Multi-process fine-tuning over gloo: 2 processes give what 1 process gives with the same global
batch, with the layer cache (each process fills its share) and with a trainable biLM."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import (
    EPS32,
    REPO,
    TINY_OVERRIDES,
    best_weights,
    finetune_f32_bounds,
    run_cli,
    write_order_task,
    write_tagged,
)

pytestmark = pytest.mark.slow(seconds=51)  # its serial seconds: conftest starts the slowest first

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# no dropout anywhere: the processes draw no random numbers that one process would draw differently
EXACT = ["classifier.dropout=0", "classifier.elmo_dropout=0", "words.dim=16", "train.epochs=3", "train.batch_size=10",
         "train.patience=3", "train.device=cpu", "classifier.token_dim=16", "classifier.hidden_dim=16",
         "baseline=false"]


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
    # cached: an averaging head, so that scalar_mix reads the cache's layer means and learned_fn every
    # token's layers; trainable: a per-token layer
    extra = ["variants=[scalar_mix,learned_fn]", "classifier.token_dim=0", "classifier.pooling=mean"] \
        if mode == "cached" else ["variants=[scalar_mix]", "bilm.trainable=true", "bilm.lr=0.001"]
    run_cli(*finetune_args(bilm, data, tmp_path / "one", *extra))
    proc = torchrun2(*finetune_args(bilm, data, tmp_path / "two", *extra))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert proc.stdout.count("per-variant reports") == 1  # one writer
    assert ("scalar_mix reads each document's layer means" in proc.stderr + proc.stdout) == (mode == "cached")
    assert "learned_fn reads each document's layer means" not in proc.stderr + proc.stdout
    for variant, a in one["variants"].items():
        b = two["variants"][variant]
        assert b["best_epoch"] == a["best_epoch"]
        wa = best_weights(tmp_path / "one" / variant)
        wb = best_weights(tmp_path / "two" / variant)
        # at most 3 epochs x 10 batches (97 documents, 10 a batch); finetune_f32_bounds says where they come from
        atol, rtol = finetune_f32_bounds(bilm, wa, 30, variant, mode == "trainable", n_docs=97, word_dim=16)
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


def tagger_f32_atol(weights: dict, steps: int, lr: float, batch_tokens: int, path_width: int) -> float:
    """The atol on each weight of the same tagger training done with sums in another order (two
    processes' all-reduce against one process's sum): each gradient is a sum over the batch's tokens
    of products along the network (x_k, the biLM's mix, the BiLSTM's gates through time, the tag
    scores, the CRF), so it is within EPS32 x n of itself, relative, with n = the batch's tokens plus
    twice the widths summed along that path; Adam's step (at most 3.2 lr) moves by at most twice that
    relative error, and w - step may round one ulp apart (EPS32 |w|). First order over the steps, as
    finetune_f32_bounds (conftest) derives it for the classifier."""
    w_max = max(float(w.abs().max()) for w in weights.values()) + steps * 3.2 * lr
    return EPS32 * steps * (2 * 3.2 * lr * (batch_tokens + 2 * path_width) + w_max)


def test_two_processes_tag_as_one(bilm, tmp_path):
    write_tagged(tmp_path / "train.conll", 97, 0)  # 97 sentences of 5 tokens: the last batch splits unevenly
    args = ["finetune", str(REPO / "configs/tagging.yaml"), f"bilm.path={bilm}",
            f"data.train={tmp_path / 'train.conll'}", "data.valid=", "data.test=", "variants=[no_elmo,scalar_mix]",
            "train.seeds=[0]", "train.epochs=3", "train.batch_size=10", "train.device=cpu", "classifier.dropout=0",
            "classifier.elmo_dropout=0", "classifier.bilstm_dim=8", "words.dim=8", "classifier.crf=true",
            "optim.warmup_steps=0"]
    run_cli(*args, f"train.run_dir={tmp_path / 'one'}", f"bilm.cache_dir={tmp_path}/one-cache")
    torchrun2(*args, f"train.run_dir={tmp_path / 'two'}", f"bilm.cache_dir={tmp_path}/two-cache")
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["processes"], two["processes"], one["task"]) == (1, 2, "tagging")
    for variant, a in one["variants"].items():
        b = two["variants"][variant]
        assert b["best_epoch"] == a["best_epoch"]
        for split in ("train", "test"):  # every token's predicted tag is the same
            assert b[split]["accuracy"] == a[split]["accuracy"] and b[split]["per_tag"] == a[split]["per_tag"]
        wa, wb = best_weights(tmp_path / "one" / variant), best_weights(tmp_path / "two" / variant)
        # 10 sentences x 7 positions with <S> and </S>; the path: x_k (8) and the mix of 3 layers of
        # 2 x 32 = 64, four gates of 8 cells through 7 steps, the 2 x 8 outputs, the tags (<= 6) and the CRF
        atol = tagger_f32_atol(wa, 3 * 10, 2e-3, 70, 8 + 3 * 64 + 7 * 4 * 8 + 16 + 2 * 6)
        for name in wa:
            torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=atol, msg=name)
