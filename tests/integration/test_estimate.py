"""`elmo-dist pretrain ... --estimate` through the CLI on the debug config: the figures it prints
(seconds, tokens/s, the N-process line), that its total is its own arithmetic on those figures, that
it counts the evaluations and checkpoints a real run then makes, and that it writes nothing.
Timing accuracy against a real run is a measurement (benchmarks/bench_estimate.py), not a test."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow(seconds=60)  # its serial seconds: conftest starts the slowest first

EPS64 = float(np.finfo(np.float64).eps)
SCHEDULE = ["train.max_steps=60", "train.eval_every=20", "checkpoint.every=25", "checkpoint.keep_last=10"]


def pretrain(cwd, data_dir, *extra, check=True, tmpdir=None):
    """`elmo-dist pretrain configs/debug.yaml` (tiny sizes) in `cwd`, its run directory `cwd/run`."""
    env = {"TMPDIR": str(tmpdir)} if tmpdir else None
    return run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data_dir}", "train.run_dir=run",
                   *TINY_OVERRIDES, *SCHEDULE, *extra, cwd=cwd, check=check, env=env)


def tree(path) -> dict:
    """Every file and folder under `path`, with size and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def dirs(tmp_path):
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    return cwd, scratch


def left_in(tmpdir) -> list:
    """What is left in $TMPDIR, but torch's own cache folder (torchinductor_<user>), which a real
    `pretrain` makes there too."""
    return [p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_")]


def half_unit(printed: str) -> float:
    """Half a unit in the last printed digit of a number: the most its printing rounded it by."""
    digits = printed.split(".")[1] if "." in printed else ""
    return 0.5 * 10.0 ** -len(digits)


def reciprocal_slack(a: float, printed: str) -> float:
    """How far a / x can be from a / printed, for the x that `printed` is x rounded."""
    x, h = float(printed), half_unit(printed)
    return a * h / (x - h) ** 2


def figure(pattern: str, text: str) -> list[str]:
    m = re.search(pattern, text)
    assert m, f"no {pattern!r} in:\n{text}"
    return [g.replace(",", "") for g in m.groups()]


def test_prints_seconds_and_its_total_is_its_arithmetic_writing_nothing(tmp_path, grammar_corpus):
    cwd, scratch = dirs(tmp_path)
    data_before = tree(grammar_corpus)
    out = pretrain(cwd, grammar_corpus, "--estimate", "--processes", "2,8", tmpdir=scratch).stdout
    # nothing written: no run directory, nothing in the working directory, the corpus or $TMPDIR
    assert not (cwd / "run").exists() and list(cwd.iterdir()) == [] and left_in(scratch) == []
    assert tree(grammar_corpus) == data_before
    assert "nothing written" in out
    rate, step = figure(r"tokens/s +([\d,]+) \(([\d.]+) s a step of 160 tokens\)", out)
    assert abs(float(rate) - 160 / float(step)) <= 0.5 + reciprocal_slack(160, step)
    evals_line = figure(r"evaluation +([\d.]+) s each x (\d+)", out)
    ckpts_line = figure(r"checkpoint +([\d.]+) s each x (\d+)", out)
    # the schedule's evaluations (steps 20 and 40, then the end) and checkpoints (25, 50, the end)
    assert evals_line[1] == "3" and ckpts_line[1] == "3"
    start, n, step2, ne, ev, nc, ck, total = figure(
        r"to max_steps +60 steps: ([\d.]+) \+ (\d+) x ([\d.]+) \+ (\d+) x ([\d.]+) \+ (\d+) x ([\d.]+) = "
        r"([\d,.]+) s \(\d+:\d\d:\d\d\)", out)
    assert (n, step2, ne, ev, nc, ck) == ("60", step, evals_line[1], evals_line[0], ckpts_line[1], ckpts_line[0])
    assert float(start) > 0 and float(step) > 0 and float(ev) > 0 and float(ck) > 0
    parts = float(start) + 60 * float(step) + 3 * float(ev) + 3 * float(ck)
    slack = half_unit(start) + 60 * half_unit(step) + 3 * half_unit(ev) + 3 * half_unit(ck) + half_unit(total)
    assert abs(float(total) - parts) <= slack, (total, parts, slack)
    tokens, steps, seconds = figure(r"one epoch +([\d,]+) tokens, ([\d,.]+) steps: ([\d,.]+) s \(\d+:\d\d:\d\d\)", out)
    assert float(tokens) == 160 * float(steps)
    assert abs(float(seconds) - float(steps) * float(step)) <= float(steps) * half_unit(step) + half_unit(seconds)
    # N processes: N x e x the one-process rate, steps / e, an evaluation split N ways, e = 0.9 stated
    for procs in (2, 8):
        rate_n, total_n = figure(rf"{procs} processes: +([\d,]+) tokens/s; one epoch [\d,.]+ s \(\S+\); "
                                 r"to max_steps ([\d,.]+) s", out)
        assert abs(float(rate_n) - procs * 0.9 * 160 / float(step)) <= 0.5 + reciprocal_slack(procs * 0.9 * 160, step)
        parts_n = float(start) + 60 * float(step) / 0.9 + 3 * float(ev) / procs + 3 * float(ck)
        slack_n = (half_unit(start) + 60 * half_unit(step) / 0.9 + 3 * half_unit(ev) / procs + 3 * half_unit(ck)
                   + half_unit(total_n))
        assert abs(float(total_n) - parts_n) <= slack_n, (procs, total_n, parts_n)
    assert "N processes, assumed: tokens/s = N x e x the one-process rate" in out and "e = 0.90" in out


@pytest.fixture(scope="module")
def estimated_then_trained(tmp_path_factory, grammar_corpus):
    """An estimate (JSON) of the schedule, then the real run of it, in the same directory."""
    cwd, scratch = dirs(tmp_path_factory.mktemp("est"))
    res = json.loads(pretrain(cwd, grammar_corpus, "--estimate", "--json", "--estimate-steps", "5",
                              tmpdir=scratch).stdout)
    assert not (cwd / "run").exists() and left_in(scratch) == []
    pretrain(cwd, grammar_corpus)
    return cwd, res


def val_steps(run) -> list[int]:
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    return [e.step for e in ea.Scalars("val/ppl")]


def test_json_counts_the_evaluations_and_checkpoints_the_run_makes(estimated_then_trained):
    cwd, res = estimated_then_trained
    run = cwd / "run"
    assert res["evals"] == len(val_steps(run)) == 3
    assert res["checkpoints"] == len(list((run / "checkpoints").iterdir())) == 3
    assert (res["start_step"], res["steps"], res["timed_steps"], res["warmup_steps"]) == (0, 60, 5, 3)
    # the total is the sum it says, in float64 (four products and a sum: a few roundings)
    parts = res["startup_s"] + 60 * res["step_s"] + 3 * res["eval_s"] + 3 * res["checkpoint_s"]
    assert res["total_s"] == pytest.approx(parts, rel=8 * EPS64)
    assert res["tokens_per_s"] == pytest.approx(160 / res["step_s"], rel=4 * EPS64)
    # an epoch is the batcher's: every lane's whole windows
    # (lanes = 16 rows, windows of 10: the offset < 10, the lanes' remainder < 16, each lane's < 10 x 16)
    assert 0 <= res["train_tokens"] - res["epoch_tokens"] < 10 + 16 + 16 * 10
    assert res["eval_tokens"] > 0 and res["scaling"]["rows"][0]["processes"] == 8


def test_on_a_run_in_progress_it_estimates_the_steps_left_and_changes_nothing(estimated_then_trained, grammar_corpus,
                                                                             tmp_path):
    cwd, _ = estimated_then_trained
    run = cwd / "run"
    before = tree(run)
    res = json.loads(pretrain(cwd, grammar_corpus, "train.max_steps=100", "--estimate", "--json",
                              "--estimate-steps", "2", tmpdir=tmp_path).stdout)
    assert tree(run) == before and left_in(tmp_path) == []
    # from step 60 to 100: evaluations at 80 and the end, checkpoints at 75 and the end, as the resume makes
    assert (res["start_step"], res["steps"], res["evals"], res["checkpoints"]) == (60, 40, 2, 2)
    pretrain(cwd, grammar_corpus, "train.max_steps=100")
    assert val_steps(run)[-2:] == [80, 100]
    assert sorted(int(p.name[5:]) for p in (run / "checkpoints").iterdir())[-2:] == [75, 100]
    # a resume pretrain would refuse (another architecture) is refused alike, in one line
    before = tree(run)
    err = one_error_line(pretrain(cwd, grammar_corpus, "train.max_steps=200", "model.lstm_dim=96", "--estimate",
                                  check=False))
    assert "model.lstm_dim: 64 -> 96" in err and tree(run) == before
    assert err == one_error_line(pretrain(cwd, grammar_corpus, "train.max_steps=200", "model.lstm_dim=96", check=False))


def one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elmo-dist: error: ") and "Traceback" not in proc.stderr, lines
    return lines[0]


@pytest.mark.parametrize("data", ["missing", "run"])
def test_refuses_what_pretrain_refuses_in_the_same_line_writing_nothing(tmp_path, data):
    """A data.dir that is no prepared corpus, and a train.run_dir that is the data.dir."""
    cwd, scratch = dirs(tmp_path)
    data_dir = cwd / "run" if data == "run" else tmp_path / "nothing"
    err = one_error_line(pretrain(cwd, data_dir, "--estimate", check=False, tmpdir=scratch))
    assert list(cwd.iterdir()) == [] and left_in(scratch) == []
    assert err == one_error_line(pretrain(cwd, data_dir, check=False))


@pytest.mark.parametrize("flags, says", [(["--json"], "go with --estimate"),
                                         (["--estimate", "--efficiency", "1.5"], "(0, 1]"),
                                         (["--estimate", "--processes", "0"], "at least 1"),
                                         (["--estimate", "--stop-at-step", "5"], "no --stop-at-step")])
def test_bad_options_are_one_line(tmp_path, grammar_corpus, flags, says):
    cwd, scratch = dirs(tmp_path)
    assert says in one_error_line(pretrain(cwd, grammar_corpus, *flags, check=False, tmpdir=scratch))
    assert list(cwd.iterdir()) == [] and left_in(scratch) == []


def test_the_benchmark_compares_the_estimate_with_a_real_run(tmp_path, grammar_corpus):
    """benchmarks/bench_estimate.py, smoke-run on tiny sizes: its JSON has both times and their ratio
    (no timing is asserted; the demo's figures come from running the script on a quiet machine)."""
    out = tmp_path / "e.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_estimate", "--config", str(REPO / "configs/debug.yaml"),
           "--data", str(grammar_corpus), *TINY_OVERRIDES, "train.max_steps=10", "--out", str(out)]
    proc = subprocess.run(cmd,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["estimate_s"] > 0 and res["real_s"] > 0 and res["ratio"] == res["estimate_s"] / res["real_s"]
    assert res["estimate"]["steps"] == res["real"]["steps"] == 10 and res["machine"]["date"]
