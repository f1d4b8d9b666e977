"""Real DeepSpeed ZeRO 1/2/3 (and stage 2 with CPU optimizer offload) on 2 gloo processes:
the same weights as plain data parallelism, exact resume from a ZeRO checkpoint, and export."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO, TINY_OVERRIDES, adagrad_f32_atol, run_cli

pytestmark = pytest.mark.slow(seconds=122)  # its serial seconds: conftest starts the slowest first

EXACT = ["model.softmax=full", "model.dropout=0", "train.max_steps=8", "train.eval_every=0", "checkpoint.every=4",
         "optim.name=adagrad", "optim.lr=0.2", "data.batch_size=8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun2(*args: str, check: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29531", "-m", "elmo_dist", *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def pretrain_args(run, data, *extra):
    return ["pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data}", f"train.run_dir={run}",
            *TINY_OVERRIDES, *EXACT, *extra]


def weights(run, step=8):
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def assert_same(a, b, run=None):
    """Bit for bit without `run`; else each weight within float32's rounding of 8 Adagrad steps (lr 0.2)
    on 2 x 8 rows x 10 steps a step, summed in another order (ZeRO's flattened, partitioned buffers,
    DeepSpeed's optimizer) than `run`'s, the plain DDP reference: adagrad_f32_atol from its accumulator."""
    assert a.keys() == b.keys()
    atol = adagrad_f32_atol(run, 8, rows=16) if run is not None else {name: 0.0 for name in a}
    for name in a:
        diff = (b[name] - a[name]).abs()
        assert (diff <= atol[name]).all(), (name, float(diff.max()))


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, grammar_corpus):
    run = tmp_path_factory.mktemp("ddp") / "r"
    torchrun2(*pretrain_args(run, grammar_corpus))
    return run


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory, grammar_corpus):
    """Plain ZeRO-2 on 2 processes, never interrupted: the run that must match plain DDP is also the
    one a stopped and resumed ZeRO-2 run must equal, so both tests share it (one launch fewer)."""
    run = tmp_path_factory.mktemp("zero2") / "z"
    torchrun2(*pretrain_args(run, grammar_corpus, "dist.zero_stage=2"))
    return run


@pytest.mark.parametrize("stage,extra", [(1, []), (2, []), (3, []), (2, ["dist.offload_optimizer=cpu"])],
                         ids=["zero1", "zero2", "zero3", "zero2-offload"])
def test_zero_matches_plain_data_parallel(tmp_path, grammar_corpus, ddp_reference, stage, extra, request):
    if (stage, extra) == (2, []):
        run = request.getfixturevalue("zero2_run")
    else:
        run = tmp_path / "z"
        torchrun2(*pretrain_args(run, grammar_corpus, f"dist.zero_stage={stage}", *extra))
    assert_same(weights(ddp_reference), weights(run), ddp_reference)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_in_sync"] is True
    if stage == 3:  # export consolidates the fp32 master shards: the same weights as plain DDP's export
        run_cli("export", str(run), "--out", str(tmp_path / "z3"))
        run_cli("export", str(ddp_reference), "--out", str(tmp_path / "ddp"))
        assert_same(load_file(str(tmp_path / "ddp" / "model.safetensors")),
                    load_file(str(tmp_path / "z3" / "model.safetensors")), ddp_reference)
        (tmp_path / "s.txt").write_text("the cat sees the fish .\n")
        run_cli("embed", str(tmp_path / "z3"), str(tmp_path / "s.txt"), str(tmp_path / "e.hdf5"))
        ev = run_cli("evaluate", str(tmp_path / "z3"), "--out", str(tmp_path / "ev"))
        assert "held-out perplexity" in ev.stdout


def test_zero2_resume_continues_identically(tmp_path, grammar_corpus, zero2_run):
    args = pretrain_args(tmp_path / "b", grammar_corpus, "dist.zero_stage=2")
    torchrun2(*args, "--stop-at-step", "4")
    assert (tmp_path / "b" / "checkpoints" / "step-4" / "deepspeed").is_dir()
    resumed = torchrun2(*args)
    assert "resumed from" in resumed.stderr
    assert_same(weights(zero2_run), weights(tmp_path / "b"))  # the same processes and kernels: bit for bit
    # a ZeRO checkpoint is refused under another stage, with the way out in the message
    proc = torchrun2(*args, "train.max_steps=12", "dist.zero_stage=0", check=False)
    assert proc.returncode != 0 and "saved with ZeRO stage 2" in proc.stderr and "export" in proc.stderr
