"""Turn an srun task's Slurm variables into the torch.distributed ones, so `srun elmo-dist pretrain`
works like torchrun: one task per process, rank and world size from Slurm.

    srun --ntasks-per-node 4 elmo-dist pretrain configs/small.yaml

SLURM_PROCID -> RANK, SLURM_NTASKS -> WORLD_SIZE, SLURM_LOCALID -> LOCAL_RANK, the first host
of SLURM_JOB_NODELIST (its Slurm NodeAddr) -> MASTER_ADDR, and a MASTER_PORT derived from the job id (so that two jobs
sharing a node don't collide). Variables a launcher already set are left alone: under torchrun or
accelerate launch inside an allocation, they win.

It also exports ELMO_DIST_DEADLINE, the job's end time in seconds since the epoch, so that the trainer
(elmo_dist.runtime.stop) can checkpoint and stop before Slurm kills it at the time limit.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list such as 'gpu[003-006,010],cpu01'."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def node_address(host: str) -> str:
    """The address Slurm itself uses for a node (its NodeAddr), which resolves even where the node name
    doesn't; the name when scontrol can't tell."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True)
        m = re.search(r"\bNodeAddr=(\S+)", out.stdout)
        if out.returncode == 0 and m:
            return m.group(1)
    return host


def job_end_time(environ=os.environ) -> float | None:
    """The Slurm job's end time (seconds since the epoch), or None if unknown or unlimited."""
    if environ.get("SLURM_JOB_END_TIME", "").isdigit():  # set by Slurm >= 23.02
        return float(environ["SLURM_JOB_END_TIME"])
    job = environ.get("SLURM_JOB_ID")
    if not job or not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30)
        # squeue prints local time, e.g. 2026-11-22T18:04:05; "N/A" or "Unknown" when there is no limit
        return datetime.fromisoformat(out.stdout.strip()).timestamp()
    except (ValueError, OSError, subprocess.SubprocessError):
        return None


def export_slurm_env(environ=os.environ) -> bool:
    """Fill the torch.distributed variables from an srun task's; True if it did. Also, inside any
    Slurm job, the deadline and one thread pool per task sized to its CPUs (OMP_NUM_THREADS from
    SLURM_CPUS_PER_TASK: left alone, every process would claim every core of the node). Called
    before torch is imported, which reads OMP_NUM_THREADS once."""
    if "SLURM_CPUS_PER_TASK" in environ:
        environ.setdefault("OMP_NUM_THREADS", environ["SLURM_CPUS_PER_TASK"])
    if "SLURM_JOB_ID" in environ and "ELMO_DIST_DEADLINE" not in environ:
        end = job_end_time(environ)
        if end is not None:
            environ["ELMO_DIST_DEADLINE"] = f"{end:.0f}"
    if "SLURM_PROCID" not in environ or "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in environ:
        environ["MASTER_ADDR"] = node_address(first_host(environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    environ.setdefault("MASTER_PORT", str(15000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    return True
