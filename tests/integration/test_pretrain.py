"""Prepare -> pretrain -> evaluate through the real CLI, on a generated corpus."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import EPS32, REPO, TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow(seconds=41)  # its serial seconds: conftest starts the slowest first


def pretrain(run_dir, data_dir, *extra, check=True):
    return run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data_dir}", f"train.run_dir={run_dir}",
                   *TINY_OVERRIDES, *extra, check=check)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, grammar_corpus):
    run = tmp_path_factory.mktemp("run") / "r"
    proc = pretrain(run, grammar_corpus, "train.max_steps=150", "train.eval_every=50", "checkpoint.every=50",
                    "optim.name=adam", "optim.lr=0.01")
    return run, proc


def test_pretraining_beats_the_unigram_model(trained_run):
    run, proc = trained_run
    summary = json.loads((run / "summary.json").read_text())
    for key in ("val_ppl_fwd", "val_ppl_bwd", "val_ppl", "unigram_ppl", "steps", "tokens", "tokens_per_s"):
        assert key in summary
    assert summary["steps"] == 150
    assert summary["tokens"] == 150 * 16 * 10
    assert summary["val_ppl"] < 0.5 * summary["unigram_ppl"], summary
    assert "unigram_ppl" in proc.stdout and "held-out perplexity" in proc.stdout


def test_run_directory_holds_config_vocab_and_last_k_checkpoints(trained_run):
    run, _ = trained_run
    assert "lstm_dim: 64" in (run / "config.yaml").read_text()
    assert (run / "vocab.txt").read_text().splitlines()[:3] == ["<S>", "</S>", "<UNK>"]
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-100", "step-150", "step-50"]  # keep_last = 3
    for s in steps:
        assert (run / "checkpoints" / s / "COMPLETE").is_file()
        assert (run / "checkpoints" / s / "config.yaml").is_file()


def test_tensorboard_scalars_read_back(trained_run):
    run, _ = trained_run
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    want = {"train/loss_fwd", "train/loss_bwd", "train/ppl", "train/lr", "train/grad_norm",
            "perf/tokens_per_s", "val/ppl_fwd", "val/ppl_bwd", "val/ppl"}
    assert want <= tags
    assert [e.step for e in ea.Scalars("train/loss_fwd")] == list(range(10, 151, 10))
    assert [e.step for e in ea.Scalars("val/ppl")] == [50, 100, 150]
    losses = [e.value for e in ea.Scalars("train/loss_fwd")]
    assert losses[-1] < losses[0] - 1.0  # it learned
    summary = json.loads((run / "summary.json").read_text())
    # TensorBoard keeps a float32: one rounding, within 2^-24 < EPS32 of the summary's float64
    assert ea.Scalars("val/ppl")[-1].value == pytest.approx(summary["val_ppl"], rel=EPS32, abs=0)
    assert "config" in "".join(ea.Tags()["tensors"])


def test_evaluate_reproduces_the_final_perplexity(trained_run, tmp_path):
    run, _ = trained_run
    proc = run_cli("evaluate", str(run), "--out", str(tmp_path / "ev"))
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert ev["val_ppl"] == summary["val_ppl"]  # the same weights, windows and kernels (one thread): bit for bit
    assert ev["unigram_ppl"] == pytest.approx(summary["unigram_ppl"])
    assert ev["steps"] == 150 and ev["tokens_per_s"] > 0
    assert "val_ppl / unigram_ppl" in proc.stdout


def test_resume_after_a_stop_is_bit_identical(tmp_path, grammar_corpus):
    common = ("train.max_steps=40", "checkpoint.every=15", "train.eval_every=0", "model.dropout=0.2",
              "optim.warmup_steps=5", "optim.decay=cosine")
    pretrain(tmp_path / "a", grammar_corpus, *common)
    stopped = pretrain(tmp_path / "b", grammar_corpus, *common, "--stop-at-step", "22")
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["finished"] is False
    assert "step-22" in {p.name for p in (tmp_path / "b" / "checkpoints").iterdir()}, stopped.stderr
    resumed = pretrain(tmp_path / "b", grammar_corpus, *common)
    assert "resumed from" in resumed.stderr and "step 22" in resumed.stderr
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-40" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-40" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["val_ppl"] == sb["val_ppl"] and sa["tokens"] == sb["tokens"]


def test_resume_refuses_an_architecture_change(tmp_path, grammar_corpus):
    pretrain(tmp_path / "r", grammar_corpus, "train.max_steps=10", "train.eval_every=0")
    proc = pretrain(tmp_path / "r", grammar_corpus, "train.max_steps=20", "model.lstm_dim=96", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "model.lstm_dim: 64 -> 96" in err[0] and "architecture" in err[0]


def test_a_half_written_checkpoint_is_skipped(tmp_path, grammar_corpus):
    run = tmp_path / "r"
    pretrain(run, grammar_corpus, "train.max_steps=20", "checkpoint.every=10", "train.eval_every=0",
             "--stop-at-step", "20")
    # a crash during the write of step-30: files there, no COMPLETE marker
    broken = run / "checkpoints" / "step-30"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    proc = pretrain(run, grammar_corpus, "train.max_steps=25", "checkpoint.every=10", "train.eval_every=0")
    assert "skipping damaged checkpoint" in proc.stderr and "resumed from" in proc.stderr and "step 20" in proc.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 25
