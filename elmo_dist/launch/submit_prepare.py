"""`elmo-dist submit prepare`: `prepare` as a chain of Slurm jobs, for a corpus too big for one node.

    jobs = submit_prepare(PrepareOptions(inputs=["crawl/*.jsonl.zst"], out="/shared/crawl"), ["partition=cpu"])
    for line in describe(jobs): print(line)
    manifest = wait(jobs)          # the manifest, as `prepare` returns it; raises with a failed job's error

The plan (elmo_dist.data.prepare_work) is written here, so that a wrong input or option fails at
once, before anything is queued. Then the stages of elmo_dist.data.prepare run as jobs, each
starting only once the one before has succeeded (`afterok`; a failure cancels the rest):

1. count: an array of `parts` tasks (default: one per input file, at most MAX_PARTS), each counting
   a contiguous share of the plan's tasks with `--workers` processes (default: its slurm.cpus_per_task);
2. merge: one job (counts, vocabulary, shard plan);
3. encode: an array of `parts` tasks, each writing a contiguous share of the shards;
4. finalize: one job (vocabulary counts, manifest, scratch removed).

Every stage reads the plan and the earlier stages' results from OUT/.prepare-work, so OUT must be
on a file system every node sees. Since each stage takes its results in task order, the output is
byte for byte what one `elmo-dist prepare` process writes (tests/slurm checks it). Local and debug
executors know no dependencies: there, each stage is waited for before the next is queued.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import submitit
from submitit.core.utils import UncompletedJobError

from elmo_dist.config import PretrainConfig, load
from elmo_dist.data.prepare import run_count, run_encode, run_finalize, run_merge
from elmo_dist.data.prepare_work import PrepareOptions, load_work, plan_work
from elmo_dist.errors import DataError, LaunchError
from elmo_dist.launch.submit import make_executor, slurm_keys

# an array larger than Slurm's default MaxArraySize (1001) is refused by sbatch
MAX_PARTS = 1000
STAGES = ("count", "merge", "encode", "finalize")


def count_part(out: str, part: int, parts: int, workers: int) -> int:
    """Array task `part` of `parts`: count its contiguous share of the plan's tasks; how many."""
    n = len(load_work(out).tasks)
    return run_count(out, list(range(part * n // parts, (part + 1) * n // parts)), workers)


def submit_prepare(opts: PrepareOptions, slurm_overrides: list[str] = (), parts: int = 0) -> dict:
    """Plan the work and queue its four stages; {stage: [jobs]} (one job for merge and finalize).
    `parts`: the size of the count and encode arrays (0: one per input file, at most MAX_PARTS,
    and no more than there are tasks). Raises DataError/ConfigError before queueing anything."""
    # the slurm section's keys, checked and documented once (configuration.md); a prepare job is one process
    slurm = replace(load(PretrainConfig, None, slurm_keys(slurm_overrides)).slurm, nodes=1, gpus_per_node=0,
                    tasks_per_node=1)
    if parts < 0:
        raise DataError(f"--parts must be at least 0, got {parts}")
    work = plan_work(opts)
    parts = min(parts or min(len(work.files) + len(work.heldout_files), MAX_PARTS), len(work.tasks))
    workers = opts.workers or slurm.cpus_per_task
    out, folder = str(work.out), Path(slurm.folder or work.out / "slurm")
    calls = {"count": [(count_part, out, p, parts, workers) for p in range(parts)],
             "merge": [(run_merge, out, workers)],
             "encode": [(run_encode, out, p, parts, workers) for p in range(parts)],
             "finalize": [(run_finalize, out)]}
    jobs, after = {}, None
    for stage in STAGES:
        extra = {"dependency": f"afterok:{after}", "kill_on_invalid_dep": "yes"} if after else None
        executor = make_executor(slurm, folder, f"{slurm.job_name}-prepare-{stage}", 1, 0, extra)
        with executor.batch():
            jobs[stage] = [executor.submit(*call) for call in calls[stage]]
        if isinstance(jobs[stage][0], submitit.SlurmJob):
            after = jobs[stage][0].job_id.split("_")[0]  # an array's own id: afterok waits for every task
        else:
            _results(stage, jobs[stage])
    return jobs


def _results(stage: str, jobs: list) -> list:
    """The stage's results, in order. A job that failed is one LaunchError: the last line of its
    traceback (the error itself, e.g. a DataError naming file:record) and where its log is."""
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except UncompletedJobError as e:  # FailedJobError too: raised in the job, or never ran
            raise LaunchError(f"prepare's {stage} job {job.job_id} failed: {_what_failed(str(e))} "
                              f"(log: {job.paths.stderr})") from None
    return results


def _what_failed(message: str) -> str:
    """The error line of a submitit failure: the last line of the traceback it quotes between two
    rules of dashes, or its first line (a job that never ran: cancelled, timed out)."""
    parts = [p for p in message.split("-" * 22) if p.strip()]
    lines = [line.strip() for line in (parts[1] if len(parts) > 2 else message).splitlines() if line.strip()]
    if len(parts) > 2:  # our own errors (DataError ...) need no class name: the line says it all
        return re.sub(r"^elmo_dist\.errors\.\w+: ", "", lines[-1])
    return " ".join(lines) or "no output"


def wait(jobs: dict) -> dict:
    """Block until the last stage ends; the manifest. The first stage that failed raises."""
    for stage in STAGES:
        result = _results(stage, jobs[stage])
    return result[0]


def describe(jobs: dict, out: str) -> list[str]:
    """What a user needs after submitting: each stage's job id and where its logs go."""
    lines = []
    for stage in STAGES:
        first = jobs[stage][0]
        array = f" (array of {len(jobs[stage])})" if len(jobs[stage]) > 1 else ""
        lines.append(f"prepare {stage:8s} job {first.job_id.split('_')[0]:>12s}{array}  log {first.paths.stdout}")
    lines.append(f"done when {Path(out) / 'manifest.json'} exists    queue: squeue --me")
    return lines

