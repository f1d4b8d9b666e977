"""The one requeue path: what a pretraining run that stopped early inside a Slurm job does next.

    requeue_after_stop(summary, stopper, limit=cfg.slurm.max_requeues, requeues=n, handler=h, is_main=...)

Both ways of running on Slurm come here once the trainer has saved its checkpoint: `sbatch
slurm/pretrain.sh` (a thin wrapper: `srun elmo-dist pretrain --requeue ...`) and `elmo-dist submit`
(submitit's PretrainJob). The decision is the same for both:

- a stop on SIGTERM that the preemption signal does not follow within TERM_GRACE_S is a cancel
  (`scancel`): the job ends without a requeue (Slurm's preemption, as submitit models it, sends
  SIGTERM first and then the preemption signal);
- after `slurm.max_requeues` requeues (preemptions and time limits together) the job ends too,
  naming its checkpoint;
- otherwise the job is requeued, and the requeued job resumes from that checkpoint.

Only the mechanism at the end differs: a submitit job hands the signal to the handler submitit
installed (which resubmits the job and requeues it, on Slurm or in the local executor); an sbatch
job runs `scontrol requeue` itself. Every refusal is a `RequeueRefused` whose message names the
checkpoint and says what to do.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from elmo_dist.config import parse_signal
from elmo_dist.errors import UserError

# Slurm preempts a job (as submitit models it) with SIGTERM first and then the preemption signal;
# after a stop on SIGTERM the job waits this long for the second before it calls the stop final
TERM_GRACE_S = 5.0


class RequeueRefused(UserError):
    """A stopped run is not requeued (a cancel, the requeue limit, or no requeueable job around it)."""


def preempt_signal() -> signal.Signals:
    """The signal Slurm's warning comes as: USR2 unless SUBMITIT_PREEMPT_SIGNAL names another (read the
    way submitit reads it, so that both sides agree)."""
    return parse_signal(os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def slurm_restarts() -> int:
    """How often Slurm has requeued this job (SLURM_RESTART_COUNT; 0 on the first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def requeue_after_stop(summary: dict, stopper, limit: int, requeues: int, handler=None,
                       is_main: bool = True) -> None:
    """Requeue the job whose run stopped early (`summary["stopped"]`), or raise RequeueRefused.

    `requeues`: the requeues so far; `handler`: submitit's handler for the preemption signal, or None
    outside submitit (then `scontrol requeue` on SLURM_JOB_ID). On the main process a requeue does not
    return (the job is requeued and this process exits); other processes exit quietly."""
    sig = preempt_signal()
    where = f"at step {summary['steps']} ({summary['stopped']}); checkpoint {summary['checkpoint']}"
    if summary["stopped"] == "terminate signal" and not stopper.wait_for(sig, TERM_GRACE_S):
        raise RequeueRefused(f"pretraining stopped {where}; SIGTERM without {sig.name} (a cancel, not a "
                             "preemption) does not requeue: submit it again to resume")
    if requeues >= limit:
        raise RequeueRefused(f"pretraining stopped {where}; not requeued: the job was requeued {requeues} time(s) "
                             f"already (slurm.max_requeues={limit}). Submit it again to resume")
    stopper.restore()  # the preemption signal goes to submitit's handler from here on
    if callable(handler):
        # raise_signal runs submitit's handler before returning; on rank 0 it resubmits, requeues and
        # exits there; on other ranks it only logs and returns
        signal.raise_signal(sig)
        if is_main:  # rank 0 came back: the handler did not requeue, and the job must not look successful
            raise RequeueRefused(f"pretraining stopped {where}, but the {sig.name} handler did not requeue the "
                                 "job: submit it again to resume")
    elif "SLURM_JOB_ID" in os.environ:
        if is_main:
            # said first: the requeue ends the job step, and with it this process, often before
            # scontrol returns
            print(f"elmo-dist: stopped {where}; requeued job {os.environ['SLURM_JOB_ID']} "
                  f"(requeue {requeues + 1} of at most {limit})", file=sys.stderr, flush=True)
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
    else:
        raise RequeueRefused(f"pretraining stopped {where} outside a requeueable job: run it again to resume")
    sys.exit(0)  # requeued: the requeued job reports
