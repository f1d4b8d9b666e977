"""Turn an srun task's Slurm variables into the torch.distributed ones, so `srun elmo-dist pretrain`
works like torchrun: one task per process, rank and world size from Slurm.

    srun --ntasks-per-node 4 elmo-dist pretrain configs/small.yaml

SLURM_PROCID -> RANK, SLURM_NTASKS -> WORLD_SIZE, SLURM_LOCALID -> LOCAL_RANK, the first host
of SLURM_JOB_NODELIST -> MASTER_ADDR, and a MASTER_PORT derived from the job id (so that two jobs
sharing a node don't collide). Variables a launcher already set are left alone: under torchrun or
accelerate launch inside an allocation, they win.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess


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


def export_slurm_env(environ=os.environ) -> bool:
    """Fill the torch.distributed variables from an srun task's; True if it did."""
    if "SLURM_PROCID" not in environ or "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    environ.setdefault("MASTER_ADDR", first_host(environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    environ.setdefault("MASTER_PORT", str(15000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    return True
