"""The Slurm path on a real cluster (munged + slurmctld + two slurmd, started by tests/slurm/conftest.py):
`sbatch slurm/pretrain.sh` on 2 tasks and on 2 nodes, preemption -> requeue -> exact resume, and the
submitit API: the pretrain -> finetune-array pipeline, a requeued submitit job, a failing job."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cluster import slurm  # noqa: F401  (the session fixture)
from conftest import (
    REPO,
    TINY_OVERRIDES,
    best_weights,
    finetune_f32_bounds,
    run_cli,
    write_grammar_corpus,
    write_order_task,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow(seconds=236)]  # its serial seconds: conftest starts the slowest first

# 120 steps (about 10 s of training on 2 tasks here): the preemption comes at step 30, leaving the stop,
# the requeue and the resume 90 steps to match the uninterrupted run on, bit for bit
STEPS, EVERY = 120, 30
# sampled softmax and dropout on: resuming must restore the random streams too, not only the weights
RUN = ["train.eval_every=0", f"checkpoint.every={EVERY}", f"train.max_steps={STEPS}", "optim.name=adam",
       "optim.lr=0.01"]
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
    # checkpoint.keep_last=3 (configs/debug.yaml): the newest three of every EVERY steps
    assert sorted((p.name for p in (run / "checkpoints").glob("step-*")), key=lambda n: int(n[5:])) == [
        f"step-{s}" for s in range(STEPS - 2 * EVERY, STEPS + 1, EVERY)]
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


def _tasks_of(slurm, job_id: str) -> list[dict]:
    """scontrol's record of every task of a job (array) id."""
    out = slurm.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def test_submit_prepare_array_writes_the_one_process_output(slurm, tmp_path):
    """`submit prepare` over text, gzipped JSONL and Parquet inputs: count array -> merge -> encode
    array -> finalize, each stage after the one before, and every output file the one-process bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = write_grammar_corpus(tmp_path / "a.txt", 3000, 1), write_grammar_corpus(tmp_path / "b.txt", 2000, 2)
    docs = write_grammar_corpus(tmp_path / "docs.txt", 1500, 3).read_text().splitlines()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress("".join(
        json.dumps({"meta": {"body": "\n".join(docs[i:i + 4])}}) + "\n" for i in range(0, 800, 4)).encode()))
    pq.write_table(pa.table({"meta": [{"body": d} for d in docs[800:]]}), tmp_path / "d.parquet", row_group_size=100)
    inputs = [str(p) for p in (a, b, tmp_path / "c.jsonl.gz", tmp_path / "d.parquet")]
    flags = ["--text-field", "meta.body", "--shard-tokens", "4000", "--min-count", "2", "--heldout-fraction", "0.05"]
    run_cli("prepare", *inputs, "--out", str(tmp_path / "one"), "--workers", "1", *flags)
    # two cores a task: the encode parts run their shards in a pool of worker processes inside the job
    proc = run_cli("submit", "prepare", *inputs, "--out", str(tmp_path / "array"), *flags, "--wait",
                   "--slurm.cpus_per_task=2", "--slurm.time_min=10", env=ENV)
    ids = dict(re.findall(r"prepare (\w+) +job +(\d+)", proc.stdout))
    assert list(ids) == ["count", "merge", "encode", "finalize"], proc.stdout
    assert "(array of 4)" in proc.stdout  # one count task per input file, by default
    stages = {stage: _tasks_of(slurm, job) for stage, job in ids.items()}
    assert [len(stages[s]) for s in ids] == [4, 1, 4, 1]
    for before, after in zip(list(ids)[:-1], list(ids)[1:]):  # afterok: no stage starts before the last ends
        assert all(t["JobState"] == "COMPLETED" for t in stages[before] + stages[after])
        assert min(t["StartTime"] for t in stages[after]) >= max(t["EndTime"] for t in stages[before])
    one, array = tmp_path / "one", tmp_path / "array"
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    written = sorted(str(p.relative_to(array)) for p in array.rglob("*") if p.is_file())
    assert files == [f for f in written if not f.startswith("slurm/")]  # submitit's logs and pickles aside
    assert len([f for f in files if f.startswith("train/shard-") and f.endswith(".npy")]) > 5
    for name in files:
        if name not in ("manifest.json", "summary.json"):  # their timings differ
            assert (one / name).read_bytes() == (array / name).read_bytes(), name
    timing = ("created", "seconds", "tokens_per_s", "options")
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, array))
    assert {k: v for k, v in m1.items() if k not in timing} == {k: v for k, v in m2.items() if k not in timing}
    assert m1["records"] == 200 + 700 and m1["bad_records_skipped"] == 0


def test_submit_prepare_stage_that_fails_is_one_error_line(slurm, tmp_path):
    """A gzip file cut short is found only when the count array reads it: one error line naming the
    file, and the later stages cancelled, leaving no manifest."""
    good = write_grammar_corpus(tmp_path / "a.txt", 500, 1)
    whole = gzip.compress(write_grammar_corpus(tmp_path / "b.txt", 2000, 2).read_bytes())
    (tmp_path / "b.txt.gz").write_bytes(whole[: len(whole) // 2])
    proc = run_cli("submit", "prepare", str(good), str(tmp_path / "b.txt.gz"), "--out", str(tmp_path / "out"),
                   "--wait", "--slurm.cpus_per_task=1", "--slurm.time_min=5", check=False, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"elmo-dist: error: prepare's count job \d+_1 failed: \S*b\.txt\.gz: "
                                        r"cannot read \(", lines[0]), proc.stderr
    merge = re.search(r"prepare merge +job +(\d+)", proc.stdout).group(1)
    assert slurm.wait(merge, 60)["JobState"] == "CANCELLED"  # kill_on_invalid_dep
    assert not (tmp_path / "out" / "manifest.json").exists()
