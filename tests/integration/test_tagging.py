"""Downstream the ELMo paper's way, through the CLI: sequence tagging end to end with every variant,
whole documents read to their end, and the `no_elmo` baseline that reads no biLM layer at all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, best_weights, run_cli, write_tagged

pytestmark = pytest.mark.slow(seconds=90)  # its serial seconds: conftest starts the slowest first

FAST = ["train.device=cpu", "train.batch_size=16", "classifier.bilstm_dim=16", "words.dim=16", "bilm.batch_size=32"]


def test_tagging_end_to_end_with_every_variant(tmp_path, tiny_bilm):
    write_tagged(tmp_path / "train.conll", 300, 0)
    write_tagged(tmp_path / "test.conll", 80, 1)
    run = tmp_path / "tag"
    proc = run_cli("finetune", str(REPO / "configs/tagging.yaml"), f"bilm.path={tiny_bilm}",
                   f"data.train={tmp_path / 'train.conll'}", "data.valid=", f"data.test={tmp_path / 'test.conll'}",
                   f"train.run_dir={run}", "train.seeds=[0]", "train.epochs=3", "classifier.crf=true", *FAST)
    lines = proc.stdout.splitlines()
    table = [ln.split()[0] for ln in lines[lines.index(next(ln for ln in lines if ln.startswith("variant"))) + 2:]
             if ln.split() and ln.split()[0] in ("no_elmo", "frozen", "scalar_mix", "learned_fn", "top")]
    assert table == ["no_elmo", "frozen", "scalar_mix", "learned_fn", "top"]  # the baseline first
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "tagging" and summary["n_test"] == 80
    for variant in table:
        m = json.loads((run / variant / "metrics.json").read_text())["test"]
        assert m["scheme"] == "none" and m["n_tokens"] == 400 and m["accuracy"] > 0.9, (variant, m["accuracy"])
        pred = (run / variant / "predictions_test.conll").read_text().strip().split("\n\n")
        assert len(pred) == 80 and all(len(line.split()) == 3 for s in pred for line in s.splitlines())
        assert "crf.transitions" in " ".join(best_weights(run / variant))  # the CRF was trained and saved
    # the docs quote such a run's table from benchmark JSON
    proc = subprocess.run([sys.executable, "-m", "benchmarks.finetune_results", str(run), "--seconds", "12.5",
                           "--out", str(tmp_path / "tagging.json")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "tagging.json").read_text())
    assert saved["table"] == summary["table"] and saved["task"] == "tagging"
    assert saved["seconds"] == 12.5 and "date" in saved["machine"] and "tagging" in saved["config"]


def _long_documents(path: Path, n: int, seed: int, filler: int = 450) -> Path:
    """Documents of `filler` words drawn alike for both classes; the label is only in the last sentence."""
    rng = np.random.default_rng(seed)
    pool = "the a cat dog bird fish sees likes finds eats today again house river tree book".split()
    with open(path, "w") as f:
        for _ in range(n):
            label = "guilty" if rng.random() < 0.5 else "innocent"
            words = [pool[i] for i in rng.integers(len(pool), size=filler)]
            text = " ".join(" ".join(words[i : i + 9]) + " ." for i in range(0, filler, 9))
            f.write(json.dumps({"text": f"{text} the verdict was {label} .", "label": label}) + "\n")
    return path


def test_whole_documents_are_read_to_their_end(tmp_path, tiny_bilm):
    """The label is in the last sentence, after 450 words: read whole, documents are learned both
    from x_k and from the biLM's layers alone (pieces of at most 100 tokens, joined); cut to their
    first 300 tokens, they are at chance."""
    data = _long_documents(tmp_path / "docs.jsonl", 120, 0)

    def accuracy(name: str, *extra: str) -> float:
        run = tmp_path / name
        run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}", f"data.train={data}",
                f"train.run_dir={run}", "baseline=false", "train.epochs=12", "optim.lr=3e-3",
                "classifier.token_dim=32", "classifier.hidden_dim=16", "classifier.dropout=0", *FAST, *extra)
        return json.loads((run / "summary.json").read_text())["table"][0]["accuracy"]

    assert accuracy("words", "variants=[no_elmo]") >= 0.9
    assert accuracy("layers", "variants=[frozen]", "words.dim=0", "classifier.elmo_dropout=0") >= 0.9
    assert accuracy("cut", "variants=[no_elmo]", "data.max_tokens=300") <= 0.75


def test_no_elmo_reads_no_bilm_layer(tmp_path, tiny_bilm):
    """no_elmo builds no layer cache and computes no layer: its result is the same, bit for bit, with
    the biLM's weights replaced by noise (the tokenizer, which it shares, stays)."""
    data = _long_documents(tmp_path / "docs.jsonl", 60, 1, filler=40)
    noisy = tmp_path / "noisy"
    run_cli("export", str(tiny_bilm), "--out", str(noisy))
    weights = load_file(str(noisy / "model.safetensors"))
    save_file({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
              str(noisy / "model.safetensors"))
    results = []
    for name, bilm in (("a", tiny_bilm), ("b", noisy)):
        run = tmp_path / name
        run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={bilm}", f"data.train={data}",
                f"train.run_dir={run}", "variants=[no_elmo]", "baseline=false", "train.epochs=2",
                f"bilm.cache_dir={tmp_path / 'cache'}", *FAST)
        results.append(best_weights(run / "no_elmo"))
    assert not (tmp_path / "cache").exists()  # where every other variant's layers would have gone
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not any("mix" in k for k in results[0])  # nothing of ELMo in the model either
