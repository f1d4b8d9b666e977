"""Submit pretraining and fine-tuning as Slurm jobs with submitit, or run them locally or in-process.

    from elmo_dist.launch import submit
    job = submit.submit_pretrain("configs/small.yaml", ["train.max_steps=1000"], ["slurm.partition=gpu"])
    submit.result(job)   # the run's summary.json as a dict; raises with the job's traceback if it failed

    p = submit.submit_pipeline("configs/small.yaml", finetune_config="configs/finetune.yaml")
    submit.result(p.pretrain), [submit.result(j) for j in p.finetune]

(`submit.result(job)` is `job.result()` for one task and rank 0's entry of `job.results()` for a
multi-task job, whose every task returns the same summary.)

Configs are loaded and checked here, before anything is queued, so a mistake fails at once; the job
receives the resolved config, not a path. Where the job runs comes from the config's `slurm` section
(cluster=auto picks Slurm where `srun` exists, local processes elsewhere; debug runs in this process).

Preemption and time limits: Slurm sends submitit's preemption signal (USR2, or the one named by
submitit's documented SUBMITIT_PREEMPT_SIGNAL) `slurm.signal_delay_s` before the end. The trainer
records it and checkpoints at the next step boundary, then puts back the handler submitit installed
for that signal; the job raises the signal again, and submitit's own preemption path calls
`checkpoint()` (a resubmission of the same job) and requeues it. The requeued job finds the checkpoint
in train.run_dir and resumes exactly. Only submitit's public behaviour is relied on (the variable,
its handler for that signal, `checkpoint()`), so a submitit release that renames its internals
cannot turn a preemption into a failure. After slurm.max_requeues requeues (preemptions and
timeouts together; submitit itself bounds only timeouts) the job fails with a line naming the
checkpoint. SIGTERM checkpoints at the next step; Slurm's preemption sends it before the preemption
signal, so the job then waits TERM_GRACE_S for that signal: with it, the job is requeued; without
(scancel), it fails without a requeue. submitit's own handler would ignore SIGTERM and train on.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from elmo_dist import configlib
from elmo_dist.config import SlurmConfig, extra_parameters, parse_signal, tasks_per_node
from elmo_dist.launch.slurm_env import export_slurm_env


def preempt_signal() -> signal.Signals:
    """The signal submitit treats as "preempted or timed out": USR2 unless SUBMITIT_PREEMPT_SIGNAL
    names another (read the way submitit reads it, so both sides agree)."""
    return parse_signal(os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _export_ranks() -> None:
    """RANK, WORLD_SIZE etc. for torch: from an srun task's SLURM_* variables, or from submitit's local
    executor, which numbers its processes in its own variables."""
    export_slurm_env()
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# Slurm preempts a job (as submitit models it) with SIGTERM first and then the preemption signal;
# after a stop on SIGTERM the job waits this long for the second before it calls the stop final
TERM_GRACE_S = 5.0


class PretrainJob(submitit.helpers.Checkpointable):
    """`elmo-dist pretrain` as a submitit job; a requeued copy resumes from the run's newest checkpoint.

    `requeues` counts this job's requeues (it travels in the pickle that `checkpoint()` resubmits):
    submitit bounds only timeouts (its max_num_timeout) and requeues preemptions without end, so
    slurm.max_requeues is enforced here, for both.
    """

    def __init__(self, tree: dict):
        self.tree = tree
        self.requeues = 0

    def __call__(self) -> dict:
        from elmo_dist.config import config_from_tree
        from elmo_dist.train.stop import StopRequest
        from elmo_dist.train.trainer import pretrain

        _export_ranks()
        sig = preempt_signal()
        # whatever submitit installed for this job (its requeue handler); the trainer's stopper replaces
        # it while it runs, so that a signal mid-step only asks for a stop, and puts it back afterwards.
        # SIGTERM too, which submitit's own handler ignores ("Bypassing signal SIGTERM")
        requeue_handler = signal.getsignal(sig)
        signals = list(dict.fromkeys([sig.name, "TERM"]))
        cfg = config_from_tree(configlib.merge_trees(self.tree, {"train": {"stop_signals": signals}}),
                               "submitted config")
        with StopRequest.from_env(signals, cfg.train.deadline_margin_s) as stopper:
            summary, is_main = pretrain(cfg, stopper=stopper)
            # a preemption is SIGTERM and then `sig`; SIGTERM alone is a cancel (scancel)
            cancelled = summary["stopped"] == "terminate signal" and not stopper.wait_for(sig, TERM_GRACE_S)
        if summary["stopped"] and not summary["finished"]:
            self._requeue_or_fail(sig, requeue_handler, summary, is_main, cancelled, cfg.slurm.max_requeues)
        return summary

    def _requeue_or_fail(self, sig, handler, summary: dict, is_main: bool, cancelled: bool, limit: int) -> None:
        where = f"at step {summary['steps']} ({summary['stopped']}); checkpoint {summary['checkpoint']}"
        if cancelled:  # stop for good, as under sbatch
            raise RuntimeError(f"pretraining stopped {where}; SIGTERM without {sig.name} (a cancel, not a "
                               "preemption) does not requeue: submit it again to resume")
        if self.requeues >= limit:
            raise RuntimeError(f"pretraining stopped {where}; not requeued: the job was requeued "
                               f"{self.requeues} time(s) already (slurm.max_requeues={limit}). Submit it "
                               "again to resume")
        self.requeues += 1  # before the handler pickles this job for the requeue
        _hand_over_to_submitit(sig, handler, where, is_main)


def _hand_over_to_submitit(sig: signal.Signals, handler, where: str, is_main: bool) -> None:
    """After the trainer saved at a step boundary (`where` says which): deliver the signal it consumed
    to submitit's handler, which calls `checkpoint()` and requeues the job."""
    if not callable(handler):  # SIG_DFL, SIG_IGN or None: not a submitit job (e.g. the debug executor)
        raise RuntimeError(f"pretraining stopped {where} outside a requeueable job: submit it again to resume")
    # raise_signal runs the Python handler before returning; on rank 0 submitit pickles the resubmission,
    # requeues and exits there; on other ranks it only logs and returns
    signal.raise_signal(sig)
    if is_main:  # rank 0 came back: the handler did not requeue, and the job must not look successful
        raise RuntimeError(f"pretraining stopped {where}, but the {sig.name} handler did not requeue the job: "
                           f"submit it again to resume")
    sys.exit(0)  # other ranks: nothing to report; the requeue restarts them


class FinetuneJob(submitit.helpers.Checkpointable):
    """One classifier variant (one array task, data parallel over its tasks); preempted, it starts
    again from the cached layers."""

    def __init__(self, tree: dict):
        self.tree = tree

    def __call__(self) -> dict:
        from elmo_dist.classify.finetune import finetune
        from elmo_dist.config import FinetuneConfig, validate_finetune

        _export_ranks()
        cfg = configlib.build(FinetuneConfig, [self.tree], "submitted config")
        validate_finetune(cfg)
        return finetune(cfg)


def make_executor(slurm: SlurmConfig, folder: Path, name: str, tasks: int, gpus: int,
                  extra: dict | None = None) -> submitit.Executor:
    cluster = None if slurm.cluster == "auto" else slurm.cluster
    chosen = cluster or submitit.AutoExecutor.which()
    kwargs = {"slurm_max_num_timeout": slurm.max_requeues} if chosen == "slurm" else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **kwargs)
    params = dict(name=name, nodes=slurm.nodes, tasks_per_node=tasks, cpus_per_task=slurm.cpus_per_task,
                  timeout_min=slurm.time_min, gpus_per_node=gpus)
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if executor.cluster == "slurm":
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(slurm, key):
                params[f"slurm_{key}"] = getattr(slurm, key)
        # one thread pool per task sized to its CPUs, as slurm/pretrain.sh does; unset, every process claims all cores
        setup = [f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{slurm.cpus_per_task}}}", *slurm.setup]
        params.update(slurm_signal_delay_s=slurm.signal_delay_s, slurm_setup=setup,
                      slurm_additional_parameters={**extra_parameters(slurm), **(extra or {})})
    executor.update_parameters(**params)
    return executor


def _folder(slurm: SlurmConfig, run_dir: str) -> Path:
    return Path(slurm.folder or Path(run_dir) / "slurm")


def submit_pretrain(config: str | None, overrides: list[str] = (), slurm_overrides: list[str] = ()):
    """Queue a pretraining run; returns the submitit job (result() = the run's summary)."""
    from elmo_dist.config import load_config

    cfg = load_config(config, list(overrides) + _slurm_keys(slurm_overrides))
    tree = configlib.to_container(cfg)
    s = cfg.slurm
    executor = make_executor(s, _folder(s, cfg.train.run_dir), s.job_name, tasks_per_node(s), s.gpus_per_node)
    return executor.submit(PretrainJob(tree))


def _slurm_keys(items: list[str]) -> list[str]:
    """'--slurm.partition=gpu', 'slurm.partition=gpu' and 'partition=gpu' all mean slurm.partition=gpu."""
    out = []
    for item in items:
        item = item.lstrip("-")
        out.append(item if item.startswith("slurm.") else "slurm." + item)
    return out


def _finetune_trees(config: str | None, overrides: list[str], bilm_path: str | None) -> tuple[list[dict], object]:
    """One resolved fine-tuning config per variant, each with its own run_dir (RUN_DIR/<variant>)."""
    from elmo_dist.config import load_finetune_config, single_variant

    extra = [f"bilm.path={bilm_path}"] if bilm_path else []
    cfg = load_finetune_config(config, list(overrides) + extra)
    n = len(cfg.variants) or 1
    return [configlib.to_container(single_variant(cfg, str(i))) for i in range(n)], cfg


def submit_finetune(config: str | None, overrides: list[str] = (), slurm_overrides: list[str] = (),
                    after: str | None = None, bilm_path: str | None = None) -> list:
    """Queue the classifier variants as one job array (one array task per variant, each on the
    config's nodes x tasks_per_node processes), optionally after a job id."""
    trees, cfg = _finetune_trees(config, list(overrides) + _slurm_keys(slurm_overrides), bilm_path)
    s = cfg.slurm
    extra = {"dependency": f"afterok:{after}", "kill_on_invalid_dep": "yes"} if after else None
    executor = make_executor(s, _folder(s, cfg.train.run_dir), s.job_name + "-finetune", tasks_per_node(s),
                             s.gpus_per_node, extra)
    with executor.batch():
        jobs = [executor.submit(FinetuneJob(tree)) for tree in trees]
    return jobs


@dataclass
class Pipeline:
    pretrain: object
    finetune: list


def submit_pipeline(config: str | None, overrides: list[str] = (), finetune_config: str | None = None,
                    finetune_overrides: list[str] = (), slurm_overrides: list[str] = ()) -> Pipeline:
    """Pretraining, then the classifier variants as an array that starts only if pretraining succeeded."""
    pre = submit_pretrain(config, overrides, slurm_overrides)
    after = pre.job_id if isinstance(pre, submitit.SlurmJob) else None
    if after is None:
        result(pre)  # local and debug executors know no dependencies: wait here instead
    jobs = submit_finetune(finetune_config, finetune_overrides, slurm_overrides, after=after, bilm_path=_run_dir(pre))
    return Pipeline(pre, jobs)


def result(job) -> dict:
    """Wait for a job; its summary (rank 0's for a multi-process job). Raises with the job's traceback."""
    return job.results()[0]


def _run_dir(job) -> str:
    return job.submission().function.tree["train"]["run_dir"]


def describe(jobs: dict) -> list[str]:
    """What a user needs after submitting: job ids, run directories, logs and how to watch."""
    lines, dirs = [], []
    for kind, value in jobs.items():
        for job in value if isinstance(value, list) else [value]:
            run_dir = _run_dir(job)
            dirs.append(run_dir)
            lines.append(f"{kind:9s} job {job.job_id:>12s}  run {run_dir}  log {job.paths.stdout}")
    parent = Path(dirs[0]).parent if len(dirs) > 1 else Path(dirs[0])
    lines.append(f"watch: tensorboard --logdir {parent}    queue: squeue -u $USER")
    return lines


def wait(jobs: dict) -> list[str]:
    """Block until every job ends; one line per result (job.result() raises with a failed job's traceback)."""
    lines = []
    for kind, value in jobs.items():
        for job in value if isinstance(value, list) else [value]:
            res = result(job)
            if kind == "pretrain":
                ppl = res.get("val_ppl", float("nan"))
                lines.append(f"pretrain  {job.job_id}: {res['steps']} steps, held-out ppl {ppl:.2f}")
            else:
                (variant, r), = res["variants"].items()
                lines.append(f"finetune  {job.job_id}: {variant} test accuracy {r['test']['accuracy']:.4f}")
    return lines
