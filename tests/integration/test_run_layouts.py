"""Every layout elmo-dist writes is taken by every command that takes a run (elmo_dist.runs).

Layouts: a run directory, one of its `checkpoints/step-N`, an export of a run, an export of a
ZeRO-3 run, an `import-elmo` directory (no softmax: the format has none), and an export of that
import. Commands: embed, evaluate (refused with a clear error where there is no softmax), export,
finetune and warm start (`train.init_from`). The first four layouts hold the same weights, so
their embeddings and perplexities must agree, not merely exist.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from elmo_dist.config import FinetuneConfig, PretrainConfig, load
from elmo_dist.errors import CheckpointError
from elmo_dist.runs import open_run

from conftest import REPO, TINY_OVERRIDES, f32_bound, ppl_rtol, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=100)  # its serial seconds: conftest starts the slowest first

LAYOUTS = ["run", "step", "export", "zero3_export", "import", "import_export"]
SAME_WEIGHTS = {"run", "step", "export"}  # the run's newest weights, bit for bit
SENTENCES = "the cat sees the fish today .\na dog likes the house\n\nthe old man paints a book again .\n"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny_bilm, grammar_corpus) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("layouts")
    steps = sorted(int(p.name.split("-")[1]) for p in (tiny_bilm / "checkpoints").glob("step-*"))
    out = {"run": tiny_bilm, "step": tiny_bilm / "checkpoints" / f"step-{steps[-1]}"}
    run_cli("export", str(tiny_bilm), "--out", str(d / "export"))
    out["export"] = d / "export"
    zero = d / "zero3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", "29537", "-m", "elmo_dist", "pretrain", str(REPO / "configs/debug.yaml"),
           f"data.dir={grammar_corpus}", f"train.run_dir={zero}", *TINY_OVERRIDES, "train.max_steps=4",
           "train.eval_every=0", "dist.zero_stage=3"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_cli("export", str(zero), "--out", str(d / "zero3_export"))
    out["zero3_export"] = d / "zero3_export"
    run_cli("export-elmo", str(tiny_bilm), str(d / "elmo"))
    run_cli("import-elmo", str(d / "elmo" / "options.json"), str(d / "elmo" / "weights.hdf5"), str(d / "import"))
    out["import"] = d / "import"
    run_cli("export", str(d / "import"), "--out", str(d / "import_export"))
    out["import_export"] = d / "import_export"
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, layouts, grammar_corpus) -> dict:
    """What the run itself gives: its embeddings and its held-out perplexity."""
    d = tmp_path_factory.mktemp("reference")
    (d / "in.txt").write_text(SENTENCES)
    run_cli("embed", str(layouts["run"]), str(d / "in.txt"), str(d / "out.hdf5"), "--device", "cpu")
    with h5py.File(d / "out.hdf5") as f:
        vectors = {k: f[k][...] for k in f if k != "sentence_to_index"}
    from elmo_dist.train.evaluate import evaluate_checkpoint

    ppl = evaluate_checkpoint(str(layouts["run"]), [f"data.dir={grammar_corpus}"], str(d / "eval"))["val_ppl"]
    return {"vectors": vectors, "val_ppl": ppl}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_embed_takes_every_layout(layout, layouts, reference, tmp_path):
    (tmp_path / "in.txt").write_text(SENTENCES)
    proc = run_cli("embed", str(layouts[layout]), str(tmp_path / "in.txt"), str(tmp_path / "out.hdf5"),
                   "--device", "cpu")
    assert "embedded 3 sentences (1 empty lines skipped)" in proc.stdout
    with h5py.File(tmp_path / "out.hdf5") as f:
        got = {k: f[k][...] for k in f if k != "sentence_to_index"}
    assert got.keys() == reference["vectors"].keys() == {"0", "1", "3"}
    for key, want in reference["vectors"].items():
        assert got[key].shape == want.shape
        if layout in SAME_WEIGHTS:
            np.testing.assert_array_equal(got[key], want)
        elif layout in ("import", "import_export"):
            # TF's one LSTM bias is the sum of PyTorch's two, the forget bias's 1 taken off and put back:
            # a few roundings more per gate and step on the same kernels, so within float32's rounding
            m, steps = open_run(layouts["run"]).config.model, want.shape[1] + 2  # the sentence, <S> and </S>
            bound = f32_bound(float(np.abs(want).max()), steps, m, extra_terms=3 * m.n_layers * steps)
            np.testing.assert_allclose(got[key], want, rtol=0, atol=bound)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_evaluate_takes_every_layout_with_a_softmax(layout, layouts, reference, grammar_corpus, tmp_path):
    proc = run_cli("evaluate", str(layouts[layout]), f"data.dir={grammar_corpus}", "--out", str(tmp_path),
                   check=False)
    if layout in ("import", "import_export"):
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "imported without a softmax, so it has no perplexity" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    ppl = float(proc.stdout.split("mean ")[1].split()[0])
    if layout in SAME_WEIGHTS:
        # the same weights and windows in another process (other threads): within float32's rounding
        saved = open_run(layouts["run"])
        m, d = saved.config.model, saved.config.data
        rtol = ppl_rtol(reference["val_ppl"], m, d.unroll_steps, d.eval_batch_size, len(saved.vocab()))
        got = json.loads((tmp_path / "summary.json").read_text())["val_ppl"]  # stdout rounds to 2 decimals
        assert got == pytest.approx(reference["val_ppl"], rel=rtol, abs=0) and f"{got:.2f}" == f"{ppl:.2f}"
    else:
        assert 1 < ppl < 1e4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_takes_every_layout(layout, layouts, tmp_path):
    proc = run_cli("export", str(layouts[layout]), "--out", str(tmp_path / "again"))
    assert "exported step" in proc.stdout
    source, again = open_run(layouts[layout]), open_run(tmp_path / "again")
    assert again.kind == "export" and again.step == source.step and again.has_softmax == source.has_softmax
    a, b = source.weights(), again.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.vocab().tokens == source.vocab().tokens


@pytest.mark.parametrize("layout", LAYOUTS)
def test_finetune_takes_every_layout(layout, layouts, tmp_path):
    from elmo_dist.classify.finetune import finetune

    data = write_order_task(tmp_path / "task.jsonl", 80, seed=1)
    cfg = load(FinetuneConfig, REPO / "configs/finetune.yaml", [
        f"bilm.path={layouts[layout]}", f"data.train={data}", f"train.run_dir={tmp_path / 'ft'}", "train.epochs=1",
        "train.device=cpu", "variants=[frozen]", "baseline=false", "classifier.token_dim=16",
        "classifier.hidden_dim=16"])
    summary = finetune(cfg)
    assert 0.0 <= summary["variants"]["frozen"]["test"]["accuracy"] <= 1.0
    assert (tmp_path / "ft" / "frozen" / "metrics.json").is_file()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_warm_start_takes_every_layout(layout, layouts, grammar_corpus, tmp_path):
    from elmo_dist.train.trainer import Trainer

    source = open_run(layouts[layout])
    overrides = [f"data.dir={grammar_corpus}", f"train.run_dir={tmp_path / 'new'}", *TINY_OVERRIDES,
                 f"train.init_from={layouts[layout]}"]
    trainer = Trainer(load(PretrainConfig, REPO / "configs/debug.yaml", overrides))
    got, want = trainer.model.state_dict(), source.weights()
    encoder = [k for k in want if not k.startswith("softmax.")]
    assert all(torch.equal(got[k], want[k]) for k in encoder)
    kept_softmax = torch.equal(got["softmax.weight"], want["softmax.weight"])
    assert kept_softmax == source.has_softmax  # the same vocabulary: kept unless there is none


def test_an_import_without_a_softmax_says_so_everywhere_it_matters(layouts):
    for layout in ("import", "import_export"):
        saved = open_run(layouts[layout])
        assert not saved.has_softmax
    with pytest.raises(CheckpointError, match="no such run or checkpoint directory"):
        open_run(layouts["run"] / "nope")
