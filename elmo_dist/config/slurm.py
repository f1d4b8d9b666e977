"""The `slurm` config section: where and how `elmo-dist submit` runs a job.

It sits in every run config (pretraining and fine-tuning) and is ignored by the trainers themselves:

    slurm:
      partition: gpu
      nodes: 2
      gpus_per_node: 4
      time_min: 1440

Override from the command line like any other key (`slurm.partition=debug`), or with
`--slurm.partition=debug` after `elmo-dist submit ...`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from elmo_dist.config import base


@dataclass
class SlurmConfig:
    cluster: Literal["auto", "slurm", "local", "debug"] = "auto"
    """auto (Slurm where `srun` is on the PATH, else local processes) | slurm | local | debug (in this process)."""
    partition: str = ""
    """Slurm partition (--partition); "" = the cluster's default partition."""
    account: str = ""
    """Slurm account to charge (--account); "" = the cluster's default."""
    qos: str = ""
    """Slurm quality of service (--qos); "" = the cluster's default."""
    constraint: str = ""
    """Slurm node features the job needs (--constraint); "" = none."""
    job_name: str = "elmo-dist"
    """Slurm job name; fine-tuning jobs get "-finetune" appended."""
    nodes: int = 1
    """Nodes per job."""
    gpus_per_node: int = 0
    """GPUs per node; 0 trains on CPU with gloo."""
    tasks_per_node: int = 0
    """Training processes per node; 0 = one per GPU (or 1 on CPU)."""
    cpus_per_task: int = 4
    """CPU cores per training process (on Slurm also its default OMP_NUM_THREADS)."""
    mem_gb: int = 0
    """Memory per node in GB; 0 = the partition's default."""
    time_min: int = 1440
    """Wall-clock limit per job, in minutes. The trainer checkpoints and requeues before it runs out."""
    signal_delay_s: int = 120
    """Slurm sends USR2 this many seconds before the time limit; the trainer checkpoints and the job is requeued."""
    max_requeues: int = 20
    """How many times one pretraining job may be requeued, preemptions and timeouts together; the
    next stop then fails the job with a line naming its checkpoint (submit again to resume)."""
    extra: list = field(default_factory=list)
    """Further sbatch options, e.g. [exclusive, reservation=abc] -> --exclusive --reservation=abc."""
    setup: list = field(default_factory=list)
    """Shell lines run before the training processes start, e.g. ['module load cuda/12.4']."""
    folder: str = ""
    """Where submitit keeps job scripts, pickles and logs; default RUN_DIR/slurm."""


def extra_parameters(cfg: SlurmConfig) -> dict:
    """slurm.extra as sbatch parameters: 'exclusive' -> True, 'key=value' -> {'key': 'value'}."""
    params = {}
    for item in cfg.extra:
        key, sep, value = str(item).lstrip("-").partition("=")
        params[key.replace("-", "_")] = value if sep else True
    return params


def validate_slurm(cfg: SlurmConfig) -> None:
    req = base.require
    for key in ("nodes", "cpus_per_task", "time_min"):
        req(getattr(cfg, key) > 0, f"slurm.{key}", f"must be positive, got {getattr(cfg, key)}")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
        req(getattr(cfg, key) >= 0, f"slurm.{key}", f"must be >= 0, got {getattr(cfg, key)}")
    req(all(str(x).lstrip("-") for x in cfg.extra), "slurm.extra", "has an empty sbatch option")


def tasks_per_node(cfg: SlurmConfig) -> int:
    return cfg.tasks_per_node or max(cfg.gpus_per_node, 1)
