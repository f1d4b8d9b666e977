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
records it and checkpoints at the next step boundary; then elmo_dist.launch.requeue, the same code
`sbatch slurm/pretrain.sh` runs, decides: requeued (through the handler submitit installed for that
signal, which calls `checkpoint()`, a resubmission of the same job), or not (a cancel, or
slurm.max_requeues reached), with a line naming the checkpoint. The requeued job finds the checkpoint
in train.run_dir and resumes exactly. Only submitit's public behaviour is relied on (the variable,
its handler for that signal, `checkpoint()`).
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import submitit

from elmo_dist.config import SlurmConfig, extra_parameters, tasks_per_node
from elmo_dist.config import base as config_base
from elmo_dist.launch.requeue import preempt_signal, requeue_after_stop
from elmo_dist.launch.slurm_env import export_slurm_env


def _export_ranks() -> None:
    """RANK, WORLD_SIZE etc. for torch: from an srun task's SLURM_* variables, or from submitit's local
    executor, which numbers its processes in its own variables."""
    export_slurm_env()
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class PretrainJob(submitit.helpers.Checkpointable):
    """`elmo-dist pretrain` as a submitit job; a requeued copy resumes from the run's newest checkpoint.

    `requeues` counts this job's requeues (it travels in the pickle that `checkpoint()` resubmits):
    submitit bounds only timeouts (its max_num_timeout) and requeues preemptions without end, so
    slurm.max_requeues is enforced in elmo_dist.launch.requeue, for both.
    """

    def __init__(self, tree: dict):
        self.tree = tree
        self.requeues = 0

    def __call__(self) -> dict:
        from elmo_dist import commands
        from elmo_dist.config import PretrainConfig, from_tree
        from elmo_dist.runtime.stop import stop_request

        _export_ranks()
        sig = preempt_signal()
        # whatever submitit installed for this job (its requeue handler); the job's stopper replaces it
        # while the run goes on, so that a signal mid-step only asks for a stop, and hands it back to
        # requeue. SIGTERM too, which submitit's own handler ignores ("Bypassing signal SIGTERM")
        handler = signal.getsignal(sig)
        signals = list(dict.fromkeys([sig.name, "TERM"]))
        cfg = from_tree(PretrainConfig, config_base.merge_trees(self.tree, {"train": {"stop_signals": signals}}),
                               "submitted config")
        stopper = stop_request(signals, cfg.train.deadline_margin_s)
        summary, is_main = commands.pretrain(cfg, stopper=stopper)
        if summary["stopped"] and not summary["finished"]:
            so_far, self.requeues = self.requeues, self.requeues + 1  # before the handler pickles this job
            requeue_after_stop(summary, stopper, cfg.slurm.max_requeues, so_far, handler, is_main)
        stopper.ignore()
        return summary


class FinetuneJob(submitit.helpers.Checkpointable):
    """One classifier variant (one array task, data parallel over its tasks); preempted, it starts
    again from the cached layers."""

    def __init__(self, tree: dict):
        self.tree = tree

    def __call__(self) -> dict:
        from elmo_dist import commands
        from elmo_dist.config import FinetuneConfig, from_tree

        _export_ranks()
        cfg = from_tree(FinetuneConfig, self.tree, "submitted config")
        return commands.finetune(cfg)


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
        # (each task's thread pool is sized to its CPUs by export_slurm_env, as under sbatch)
        params.update(slurm_signal_delay_s=slurm.signal_delay_s, slurm_setup=list(slurm.setup),
                      slurm_additional_parameters={**extra_parameters(slurm), **(extra or {})})
    executor.update_parameters(**params)
    return executor


def _folder(slurm: SlurmConfig, run_dir: str) -> Path:
    return Path(slurm.folder or Path(run_dir) / "slurm")


def submit_pretrain(config: str | None, overrides: list[str] = (), slurm_overrides: list[str] = ()):
    """Queue a pretraining run; returns the submitit job (result() = the run's summary)."""
    from elmo_dist.config import PretrainConfig, load

    cfg = load(PretrainConfig, config, list(overrides) + slurm_keys(slurm_overrides))
    tree = config_base.to_container(cfg)
    s = cfg.slurm
    executor = make_executor(s, _folder(s, cfg.train.run_dir), s.job_name, tasks_per_node(s), s.gpus_per_node)
    return executor.submit(PretrainJob(tree))


def slurm_keys(items: list[str]) -> list[str]:
    """'--slurm.partition=gpu', 'slurm.partition=gpu' and 'partition=gpu' all mean slurm.partition=gpu."""
    out = []
    for item in items:
        item = item.lstrip("-")
        out.append(item if item.startswith("slurm.") else "slurm." + item)
    return out


def _finetune_trees(config: str | None, overrides: list[str], bilm_path: str | None) -> tuple[list[dict], object]:
    """One resolved fine-tuning config per variant, each with its own run_dir (RUN_DIR/<variant>)."""
    from elmo_dist.config import FinetuneConfig, load, single_variant

    extra = [f"bilm.path={bilm_path}"] if bilm_path else []
    cfg = load(FinetuneConfig, config, list(overrides) + extra)
    n = len(cfg.variants) or 1
    return [config_base.to_container(single_variant(cfg, str(i))) for i in range(n)], cfg


def submit_finetune(config: str | None, overrides: list[str] = (), slurm_overrides: list[str] = (),
                    after: str | None = None, bilm_path: str | None = None) -> list:
    """Queue the classifier variants as one job array (one array task per variant, each on the
    config's nodes x tasks_per_node processes), optionally after a job id."""
    trees, cfg = _finetune_trees(config, list(overrides) + slurm_keys(slurm_overrides), bilm_path)
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
    lines.append(f"watch: tensorboard --logdir {parent}    queue: squeue --me")
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
