"""`elmo-dist submit` without Slurm: the debug executor (in this process) and the local one (child
processes, two ranks over gloo), which users without a cluster rely on; plus the trainer's
signal/deadline stop that makes preemption safe, and its handover to submitit's requeue."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=148)  # its serial seconds: conftest starts the slowest first

RUN = ["train.eval_every=0", "checkpoint.every=0", "train.max_steps=30"]


def pretrain_overrides(run, data, *extra):
    return [f"data.dir={data}", f"train.run_dir={run}", *TINY_OVERRIDES, *RUN, *extra]


def test_cli_submit_pipeline_on_the_debug_executor(tmp_path, grammar_corpus):
    write_order_task(tmp_path / "train.jsonl", 160, 0)
    proc = run_cli("submit", "pipeline", str(REPO / "configs/debug.yaml"),
                   *pretrain_overrides(tmp_path / "pre", grammar_corpus), "--slurm.cluster=debug", "--slurm.time_min=7",
                   "--finetune", str(REPO / "configs/finetune.yaml"), "--ft", f"data.train={tmp_path / 'train.jsonl'}",
                   "--ft", f"train.run_dir={tmp_path / 'ft'}", "--ft", "variants=[frozen,top]",
                   "--ft", "train.epochs=2", "--ft", "train.device=cpu", "--wait")
    out = proc.stdout
    assert f"run {tmp_path / 'pre'}" in out and f"run {tmp_path / 'ft' / 'frozen'}" in out
    assert "watch: tensorboard --logdir" in out
    assert "pretrain " in out and "30 steps" in out
    assert "frozen test accuracy" in out and "top test accuracy" in out
    assert json.loads((tmp_path / "pre" / "summary.json").read_text())["finished"]
    assert (tmp_path / "ft" / "top" / "metrics.json").exists()
    # --slurm.* is the job parameters of both jobs: the fine-tuning ran on the debug executor too
    for config in (tmp_path / "pre" / "config.yaml", tmp_path / "ft" / "top" / "config.yaml"):
        assert "time_min: 7" in config.read_text() and "cluster: debug" in config.read_text(), config


def test_local_executor_runs_two_ranks(tmp_path, grammar_corpus):
    from elmo_dist.launch.submit import result, submit_pretrain

    job = submit_pretrain(str(REPO / "configs/debug.yaml"), pretrain_overrides(tmp_path / "run", grammar_corpus),
                          ["cluster=local", "tasks_per_node=2", "cpus_per_task=1"])
    summary = result(job)
    assert summary["finished"] and summary["processes"] == 2 and summary["ranks_in_sync"]
    assert (tmp_path / "run" / "checkpoints" / "step-30" / "COMPLETE").exists()


def test_bad_slurm_key_fails_before_anything_is_queued(tmp_path, grammar_corpus):
    proc = run_cli("submit", "pretrain", str(REPO / "configs/debug.yaml"),
                   *pretrain_overrides(tmp_path / "run", grammar_corpus), "--slurm.partiton=gpu", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["elmo-dist: error: overrides: unknown config key 'slurm.partiton'; "
                                                "did you mean 'slurm.partition'?"]
    assert not (tmp_path / "run").exists()


def _start_pretrain(tmp_path, grammar_corpus, *extra, env=None):
    cmd = [sys.executable, "-m", "elmo_dist", "pretrain", str(REPO / "configs/debug.yaml"),
           *pretrain_overrides(tmp_path / "run", grammar_corpus, "train.max_steps=100000", "logging.log_every=5"),
           *extra]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, timeout=120) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "step 10/" in line:
            return lines
    raise AssertionError("".join(lines))


def test_usr2_checkpoints_at_a_step_boundary_and_exits_75(tmp_path, grammar_corpus):
    proc = _start_pretrain(tmp_path, grammar_corpus)
    _wait_for_step(proc)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    step = int(err.split("stopped at step ")[1].split(" ")[0])
    ckpt = tmp_path / "run" / "checkpoints" / f"step-{step}"
    assert (ckpt / "COMPLETE").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == step
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == "requeue signal" and not summary["finished"]


def test_term_checkpoints_and_exits_143(tmp_path, grammar_corpus):
    proc = _start_pretrain(tmp_path, grammar_corpus)
    _wait_for_step(proc)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminate signal" in err and list((tmp_path / "run" / "checkpoints").glob("step-*/COMPLETE"))


def test_deadline_stops_before_the_time_limit(tmp_path, grammar_corpus):
    # a job that must end 8 s from now, with a 5 s margin: the trainer stops by itself, about 3 s in
    proc = _start_pretrain(tmp_path, grammar_corpus, "train.deadline_margin_s=5",
                           env={"ELMO_DIST_DEADLINE": f"{time.time() + 8:.0f}"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "(deadline)" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] == "deadline"


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the local executor's controller starts one per rank)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def _wait_in_log(job, text: str, timeout: float = 120) -> Path:
    """Rank 0's stderr (the trainer logs there; a requeued attempt appends) once it shows `text`."""
    path, deadline = Path(job.paths.stderr), time.time() + timeout
    while time.time() < deadline and not job.done():
        if path.exists() and text in path.read_text(errors="replace"):
            return path
        time.sleep(0.2)
    raise AssertionError(f"'{text}' never appeared in {path}:\n" + (path.read_text() if path.exists() else ""))


# 2 ranks with submitit's default signal, as Slurm preempts a multi-task job; 1 rank with another
# signal named by SUBMITIT_PREEMPT_SIGNAL: the trainer must stop on the signal submitit listens to
@pytest.mark.parametrize("tasks, preempt_signal", [(2, None), (1, "USR1")])
def test_preempted_local_job_checkpoints_requeues_and_resumes(tmp_path, grammar_corpus, monkeypatch,
                                                              tasks, preempt_signal):
    from elmo_dist.launch.submit import result, submit_pretrain

    if preempt_signal:
        monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", preempt_signal)
    sig = signal.Signals["SIG" + (preempt_signal or "USR2")]
    job = submit_pretrain(str(REPO / "configs/debug.yaml"),
                          pretrain_overrides(tmp_path / "run", grammar_corpus, "train.max_steps=120",
                                             "logging.log_every=5"),
                          ["cluster=local", f"tasks_per_node={tasks}", "cpus_per_task=1"])
    log = _wait_in_log(job, "step 10/")
    ranks = _children(int(job.job_id))
    assert len(ranks) == tasks
    for pid in ranks:  # as Slurm does: every task gets the signal
        os.kill(pid, sig)
    summary = result(job)
    text = log.read_text()
    assert summary["finished"] and summary["steps"] == 120 and summary["processes"] == tasks, text
    # the first attempt stopped at a step boundary and saved; the requeued one resumed from that save
    assert "(requeue signal): saving a checkpoint" in text, text
    step = int(text.split("stopping at step ")[1].split(" ")[0])
    assert 10 <= step < 120
    assert (tmp_path / "run" / "checkpoints" / f"step-{step}" / "COMPLETE").exists()
    assert f"step-{step} at step {step}" in text, text  # "resumed from .../step-N at step N"
    assert f"training steps {step} -> 120" in text, text


def _submit_and_signal(tmp_path, grammar_corpus, sig, times: int, *slurm: str):
    """A 1-task local job, sent `sig` at a step of each of `times` attempts; returns (job, its log)."""
    from elmo_dist.launch.submit import submit_pretrain

    job = submit_pretrain(str(REPO / "configs/debug.yaml"),
                          pretrain_overrides(tmp_path / "run", grammar_corpus, "train.max_steps=3000",
                                             "logging.log_every=5"),
                          ["cluster=local", "tasks_per_node=1", "cpus_per_task=1", *slurm])
    for attempt in range(times):
        marker = "step 10/" if attempt == 0 else "resumed from"
        log = _wait_in_log(job, marker)
        while log.read_text().count(marker) < (1 if attempt == 0 else attempt):
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(_children(int(job.job_id))[0], sig)
    return job, log


def test_sigterm_stops_a_submitted_job_with_a_checkpoint_and_no_requeue(tmp_path, grammar_corpus):
    """Issue 15, case 14: submitit's handler logged "Bypassing signal SIGTERM" and training went on."""
    from elmo_dist.launch.submit import result

    job, log = _submit_and_signal(tmp_path, grammar_corpus, signal.SIGTERM, 1)
    with pytest.raises(Exception, match=r"does not requeue: submit it again to resume"):
        result(job)
    text = log.read_text()
    assert "(terminate signal): saving a checkpoint" in text and "resumed from" not in text, text
    step = int(text.split("stopping at step ")[1].split(" ")[0])
    assert step < 3000 and (tmp_path / "run" / "checkpoints" / f"step-{step}" / "COMPLETE").exists()


def test_max_requeues_bounds_preemptions(tmp_path, grammar_corpus):
    """Issue 15, case 14: submitit bounds only timeouts, so with slurm.max_requeues=1 four USR2s gave
    four requeues. Now the second stop fails the job, naming its checkpoint."""
    from elmo_dist.launch.submit import result

    job, log = _submit_and_signal(tmp_path, grammar_corpus, signal.SIGUSR2, 2, "max_requeues=1")
    with pytest.raises(Exception, match=r"requeued 1 time\(s\) already \(slurm.max_requeues=1\)"):
        result(job)
    assert log.read_text().count("resumed from") == 1, log.read_text()


SUBMIT_PY = REPO / "elmo_dist" / "launch" / "submit.py"


def _private_submitit_uses(source: str) -> list[str]:
    """Where `source` reaches into submitit's internals: an underscored name imported from or looked up
    on submitit, or submitit's handler class recognized by its name."""
    tree, found = ast.parse(source), []
    aliases = {a.asname or a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for a in node.names if a.name.split(".")[0] == "submitit"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("submitit"):
            aliases |= {a.asname or a.name for a in node.names}
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name.startswith("_")]
            found += [f"line {node.lineno}: imports {node.module}"] if "._" in "." + node.module else []
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            root = node.value
            while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"line {node.lineno}: .{node.attr} on submitit")
        # a name, attribute or string such as `type(handler).__name__ == "SignalHandler"`
        named = (getattr(node, "id", None), getattr(node, "attr", None), getattr(node, "value", None))
        if isinstance(node, (ast.Name, ast.Attribute, ast.Constant)) and "SignalHandler" in named:
            found.append(f"line {node.lineno}: names submitit's SignalHandler")
    return found


def test_submit_uses_only_public_submitit_api():
    # the checker itself catches what submit.py used to do
    old = ("import submitit\nsig = submitit.JobEnvironment._usr_sig()\n"
           "ok = type(h.__self__).__name__ == 'SignalHandler'\nfrom submitit.core import _submit\n")
    assert len(_private_submitit_uses(old)) == 3
    # a rename inside submitit must not turn a preemption into a failed job
    assert _private_submitit_uses(SUBMIT_PY.read_text()) == []
