"""The Slurm path on a real cluster (munged + slurmctld + two slurmd, started by tests/slurm/conftest.py):
`sbatch slurm/pretrain.sh` on 2 tasks and on 2 nodes, preemption -> requeue -> exact resume, and the
submitit API: the pretrain -> finetune-array pipeline, a requeued submitit job, a failing job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cluster import slurm  # noqa: F401  (the session fixture)
from conftest import REPO, TINY_OVERRIDES, best_weights, finetune_f32_bounds, run_cli, write_order_task

pytestmark = [pytest.mark.slurm, pytest.mark.slow(seconds=243)]  # its serial seconds: conftest starts the slowest first

STEPS = 240
# sampled softmax and dropout on: resuming must restore the random streams too, not only the weights
RUN = ["train.eval_every=0", "checkpoint.every=60", f"train.max_steps={STEPS}", "optim.name=adam", "optim.lr=0.01"]
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def pretrain_args(run: Path, data: Path, *extra: str) -> list[str]:
    return [str(REPO / "configs/debug.yaml"), f"data.dir={data}", f"train.run_dir={run}", *TINY_OVERRIDES, *RUN, *extra]


def final_weights(run: Path, step: int = STEPS) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def loss_curve(run: Path) -> dict[int, float]:
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    events = ea.Scalars("train/loss_fwd")
    steps = [e.step for e in events]
    assert steps == sorted(set(steps)), f"duplicate or out-of-order TensorBoard steps: {steps}"
    return {e.step: e.value for e in events}


def losses(run: Path) -> list[float]:
    return list(loss_curve(run).values())


def wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"'{text}' never appeared in {path}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, grammar_corpus) -> Path:
    """The same run launched with torchrun (2 processes, no Slurm) and never interrupted."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29543", "-m", "elmo_dist", "pretrain", *pretrain_args(run, grammar_corpus)]
    proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


def sbatch_pretrain(slurm, tmp_path: Path, sbatch_flags: list[str], run: Path, data: Path) -> str:
    return slurm.sbatch([*CPU_JOB, *sbatch_flags, f"--output={tmp_path}/%j.out", str(REPO / "slurm/pretrain.sh"),
                         *pretrain_args(run, data)], env=ENV, cwd=tmp_path)


def test_sbatch_two_tasks_matches_torchrun(slurm, tmp_path, grammar_corpus, reference):
    run = tmp_path / "run"
    job = sbatch_pretrain(slurm, tmp_path, ["--nodes=1", "--ntasks-per-node=2"], run, grammar_corpus)
    rec = slurm.wait(job, 300)
    log = (tmp_path / f"{job}.out").read_text()
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    assert "2 task(s)" in log and "on 2 process(es)" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["processes"] == 2 and summary["ranks_in_sync"]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-120", "step-180", "step-240"]
    assert losses(run) == losses(reference) and len(losses(run)) == STEPS // 10
    assert max_diff(final_weights(run), final_weights(reference)) == 0.0


def test_two_nodes_one_task_each_form_one_group(slurm, tmp_path, grammar_corpus, reference):
    run = tmp_path / "run"
    job = sbatch_pretrain(slurm, tmp_path, ["--nodes=2", "--ntasks-per-node=1"], run, grammar_corpus)
    rec = slurm.wait(job, 300)
    log = (tmp_path / f"{job}.out").read_text()
    assert rec["JobState"] == "COMPLETED", log
    assert rec["NodeList"] == "n[1-2]" and "on n[1-2]: 2 task(s)" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_in_sync"]
    # one gloo group across the two nodes trains exactly like torchrun's two local processes
    assert max_diff(final_weights(run), final_weights(reference)) == 0.0


def test_preempted_job_requeues_and_resumes_exactly(slurm, tmp_path, grammar_corpus, reference):
    run = tmp_path / "run"
    job = sbatch_pretrain(slurm, tmp_path, ["--nodes=1", "--ntasks-per-node=2"], run, grammar_corpus)
    out = tmp_path / f"{job}.out"
    wait_for(out, "step 30/")
    t0 = time.time()
    # what Slurm does --signal seconds before the time limit or a preemption: USR2 to every task
    slurm.run(["scancel", "--signal=USR2", job])
    rec = slurm.wait(job, 300)
    log = out.read_text()
    assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "1", log
    assert f"requeued job {job} (requeue 1 of at most" in log and "(restart 1)" in log
    stopped = int(log.split("stopped at step ")[1].split(" ")[0])
    assert 30 <= stopped < STEPS and f"resumed from {run}/checkpoints/step-{stopped}" in log
    diff = max_diff(final_weights(run), final_weights(reference))
    print(f"\npreemption: stopped at step {stopped}, requeued, finished {time.time() - t0:.0f} s after the signal; "
          f"max |w - w_uninterrupted| = {diff}")
    assert diff == 0.0
    # TensorBoard: one curve with no duplicate steps. The stop logs the part-window it ran (one extra
    # point at the stop step), and the first window after the resume is short; every later point is the
    # uninterrupted run's, digit for digit
    got, ref = loss_curve(run), loss_curve(reference)
    assert set(got) == set(ref) | {stopped}
    first_full = (stopped // 10 + 2) * 10
    assert {s: v for s, v in got.items() if s >= first_full} == {s: v for s, v in ref.items() if s >= first_full}


def test_submitit_pipeline_pretrain_then_finetune_array(slurm, tmp_path, grammar_corpus):
    from elmo_dist.launch.submit import result, submit_pipeline

    write_order_task(tmp_path / "train.jsonl", 240, 0)
    write_order_task(tmp_path / "test.jsonl", 80, 1)
    ft = [f"data.train={tmp_path / 'train.jsonl'}", f"data.test={tmp_path / 'test.jsonl'}",
          f"train.run_dir={tmp_path / 'ft'}", "variants=[frozen,scalar_mix,learned_fn]", "train.epochs=3",
          "classifier.hidden_dim=32", "bilm.batch_size=64", "train.device=cpu", "slurm.cpus_per_task=1"]
    pre_over = pretrain_args(tmp_path / "pre", grammar_corpus, "train.max_steps=60", "slurm.tasks_per_node=2",
                             "slurm.cpus_per_task=1")[1:]
    p = submit_pipeline(str(REPO / "configs/debug.yaml"), pre_over, str(REPO / "configs/finetune.yaml"), ft,
                        ["--slurm.time_min=15"])
    assert len(p.finetune) == 3
    # the array waits on pretraining (afterok): queued, not started, while pretraining runs
    for job in p.finetune:
        rec = slurm.job(job.job_id)
        assert rec["Dependency"].startswith(f"afterok:{p.pretrain.job_id}"), rec
        for _ in range(20):  # Reason is filled in at the scheduler's next pass
            if rec["Reason"] != "None":
                break
            time.sleep(0.25)
            rec = slurm.job(job.job_id)
        assert rec["JobState"] == "PENDING" and rec["Reason"] == "Dependency", rec
    summary = result(p.pretrain)
    results = [result(j) for j in p.finetune]
    assert summary["finished"] and summary["processes"] == 2 and summary["steps"] == 60
    pre_end = slurm.wait(p.pretrain.job_id, 60)["EndTime"]
    assert {r["table"][0]["variant"] for r in results} == {"frozen", "scalar_mix", "learned_fn"}
    for job, res in zip(p.finetune, results):
        rec = slurm.wait(job.job_id, 60)  # the result arrives while the task is still exiting
        assert rec["JobState"] == "COMPLETED" and rec["StartTime"] >= pre_end
        variant = res["table"][0]["variant"]
        assert (tmp_path / "ft" / variant / "metrics.json").exists()
        assert 0.0 <= res["variants"][variant]["test"]["accuracy"] <= 1.0


def test_a_job_sbatch_refuses_is_one_error_line(slurm, tmp_path, grammar_corpus):
    """This cluster has no GPUs: sbatch refuses a job asking for some, and submit says so in one line."""
    proc = run_cli("submit", "pretrain", *pretrain_args(tmp_path / "run", grammar_corpus),
                   "--slurm.gpus_per_node=4", check=False, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("elmo-dist: error: sbatch: error:") and "gres" in line.lower(), line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_submitit_job_requeued_by_usr2_resumes(slurm, tmp_path, grammar_corpus, reference):
    from elmo_dist.launch.submit import result, submit_pretrain

    run = tmp_path / "run"
    job = submit_pretrain(str(REPO / "configs/debug.yaml"), pretrain_args(run, grammar_corpus)[1:],
                          ["tasks_per_node=2", "cpus_per_task=1", "time_min=15"])
    wait_for(Path(job.paths.stderr), "step 30/")  # the trainer logs to stderr
    job._interrupt()  # USR2, as Slurm sends before a preemption or the time limit
    summary = result(job)
    rec = slurm.wait(job.job_id, 60)
    assert summary["finished"] and rec["Restarts"] == "1"
    assert max_diff(final_weights(run), final_weights(reference)) == 0.0


def test_failed_job_reports_its_error_and_is_not_requeued(slurm, tmp_path, grammar_corpus):
    from elmo_dist.launch.submit import submit_pretrain

    job = submit_pretrain(str(REPO / "configs/debug.yaml"),
                          pretrain_args(tmp_path / "run", tmp_path / "no-such-corpus")[1:], ["time_min=5"])
    with pytest.raises(Exception) as err:
        job.result()
    assert "no-such-corpus" in str(err.value) and "Traceback" in str(err.value)
    rec = slurm.wait(job.job_id, 60)
    assert rec["JobState"] == "FAILED" and rec["Restarts"] == "0"


def test_sbatch_finetune_two_tasks_matches_one_process(slurm, tmp_path, grammar_corpus, reference):
    """slurm/finetune.sh on 2 tasks (2 nodes): data-parallel fine-tuning gives the 1-process result."""
    data = write_order_task(tmp_path / "task.jsonl", 90, seed=2)
    args = [str(REPO / "configs/finetune.yaml"), f"bilm.path={reference}", f"data.train={data}",
            "variants=[scalar_mix]", "train.epochs=2", "train.batch_size=10", "classifier.dropout=0",
            "classifier.elmo_dropout=0", "words.dim=16", "classifier.token_dim=16", "classifier.hidden_dim=16",
            "baseline=false", "train.device=cpu"]
    one = run_cli("finetune", *args, f"train.run_dir={tmp_path / 'one'}", f"bilm.cache_dir={tmp_path / 'c1'}")
    assert one.returncode == 0
    job = slurm.sbatch([*CPU_JOB, "--nodes=2", "--ntasks-per-node=1", f"--output={tmp_path}/%j.out",
                        str(REPO / "slurm/finetune.sh"), *args, f"train.run_dir={tmp_path / 'two'}",
                        f"bilm.cache_dir={tmp_path / 'c2'}"], env=ENV, cwd=tmp_path)
    rec = slurm.wait(job, 300)
    log = (tmp_path / f"{job}.out").read_text()
    assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", log
    a = json.loads((tmp_path / "one" / "summary.json").read_text())
    b = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert a["processes"] == 1 and b["processes"] == 2 and "2 process(es)" in log
    assert b["variants"]["scalar_mix"]["test"]["accuracy"] == a["variants"]["scalar_mix"]["test"]["accuracy"]
    # sums in another order: within float32's rounding of that fine-tuning (at most 2 epochs x 9 batches)
    weights = best_weights(tmp_path / "one" / "scalar_mix")
    _, rtol = finetune_f32_bounds(reference, weights, 2 * 9, "scalar_mix", trainable=False, n_docs=90,
                                  word_dim=16)
    assert b["variants"]["scalar_mix"]["test"]["loss"] == pytest.approx(a["variants"]["scalar_mix"]["test"]["loss"],
                                                                        rel=rtol, abs=0)
