"""Stopping early without losing work: signals and a wall-clock deadline become "checkpoint at the
next step boundary, then exit", agreed by every rank.

    stopper = stop_request(["USR2", "TERM"], margin_s=300)   # once per command, handed down
    while training:
        step()
        reason = stopper.poll(accelerator)   # None, or why we must stop now
    stopper.ignore()                         # the work is saved: later signals change nothing

A signal handler may interrupt a step anywhere, so it only records the signal; the training loop
looks at it between steps, where the state is consistent and a checkpoint is exact. Ranks can get
the signal at different moments (or read slightly different clocks), so the decision is reduced
across ranks with a max, every SYNC_EVERY steps: all stop at the same step, or none does.

Cluster-neutral on purpose: the deadline comes from ELMO_DIST_DEADLINE (seconds since the epoch),
which elmo_dist.launch.slurm_env fills in from the Slurm job's end time.

Under torchrun (or `accelerate launch`, which runs torchrun's agent) two things change, because the
agent counts any exit status but 0 as a failure, reports it with a ChildFailedError traceback and,
with --max-restarts, starts the workers again, which would resume and train on after a requested
stop: a stopped worker exits 0 (the stop line and summary.json still say it stopped), and a worker
asks the kernel for SIGTERM when the agent dies (torchrun dies of a USR2 it does not forward), so
it checkpoints and exits instead of training on as an orphan.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from enum import Enum

from elmo_dist.config import parse_signal

# exit statuses of `elmo-dist pretrain` after a clean early stop (checkpoint written)
EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped for a preemption warning or the time limit; run it again to continue
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped because it was told to; the checkpoint lets it resume later

# with several processes, how many steps apart the ranks compare their stop flags
SYNC_EVERY = 10


class StopReason(str, Enum):
    """Why a run stopped early (a str, so summary.json and the logs show the value)."""

    def __str__(self) -> str:
        return self.value

    DEADLINE = "deadline"  # the job's end time is near
    REQUEUE = "requeue signal"  # e.g. Slurm's USR2 before preemption or the time limit
    TERMINATE = "terminate signal"  # SIGTERM, e.g. scancel

    @property
    def exit_status(self) -> int:
        return EXIT_TERMINATED if self is StopReason.TERMINATE else EXIT_REQUEUE


# the code each rank contributes to the max-reduce: a larger code wins
_REASONS = {0: None, 1: StopReason.DEADLINE, 2: StopReason.REQUEUE, 3: StopReason.TERMINATE}


def under_elastic_agent() -> bool:
    """True in a worker started by torchrun's agent (torchrun, `accelerate launch`), which sets TORCHELASTIC_RUN_ID."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def stop_when_parent_dies(sig: signal.Signals = signal.SIGTERM) -> None:
    """Linux only (elsewhere a no-op): the kernel sends `sig` to this process when its parent dies
    (prctl PR_SET_PDEATHSIG), so a worker whose launcher was killed stops like one told to stop."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig))
    if os.getppid() == 1:  # the parent died before the request: nobody will send it
        os.kill(os.getpid(), sig)


def _env_deadline() -> float | None:
    raw = os.environ.get("ELMO_DIST_DEADLINE", "")
    return float(raw) if raw else None


def stop_request(signals: list[str], margin_s: float = 0.0) -> "StopRequest":
    """A command's one StopRequest, listening from now on: built once by the command's entry point
    (`cli.main`, before torch is even imported; the Slurm job; `commands.pretrain` for a Python
    caller) and handed down; the trainer only polls it. The deadline comes from ELMO_DIST_DEADLINE;
    under torchrun the process also stops when the agent dies."""
    request = StopRequest(signals, _env_deadline(), margin_s).listen()
    if under_elastic_agent():  # not an orphan that trains on when torchrun dies
        stop_when_parent_dies()
    return request


class StopRequest:
    """Records stop signals and watches the deadline; `poll` says, identically on every rank, when to stop."""

    def __init__(self, signals: list[str] = (), deadline: float | None = None, margin_s: float = 0.0):
        self.signals = [parse_signal(s) for s in signals]
        self.deadline, self.margin_s = deadline, margin_s
        self.received: signal.Signals | None = None
        self.seen: set[signal.Signals] = set()  # every stop signal received, not only the last
        self._previous: dict = {}
        self._step_seconds = 0.0
        self._last_poll: float | None = None
        self._polls, self._every = 0, 1

    def configure(self, signals: list[str], margin_s: float) -> "StopRequest":
        """Switch to a run's own signals and deadline (ELMO_DIST_DEADLINE), keeping what was recorded."""
        self.deadline, self.margin_s = _env_deadline(), margin_s
        return self.listen(signals)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)
        self.seen.add(self.received)

    def wait_for(self, sig: signal.Signals, seconds: float) -> bool:
        """Whether `sig` (one of the signals listened to) has come, waiting up to `seconds` for it."""
        deadline = time.monotonic() + seconds
        while sig not in self.seen and time.monotonic() < deadline:
            time.sleep(0.05)
        return sig in self.seen

    def listen(self, signals: list[str] | None = None) -> "StopRequest":
        """Record `signals` (default: the constructor's) from now on; handlers of signals dropped
        from an earlier call are restored. The CLI calls this before anything else and keeps the
        handlers until the process exits: a signal during start-up then stops the run at its first
        step boundary, and one after the final checkpoint no longer kills a finished run."""
        wanted = self.signals if signals is None else [parse_signal(s) for s in signals]
        for sig in [s for s in self._previous if s not in wanted]:
            signal.signal(sig, self._previous.pop(sig))
        for sig in wanted:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        self.signals = wanted
        if self.received is not None and self.received not in wanted:
            self.received = None
        return self

    def ignore(self) -> None:
        """Ignore the stop signals from now on: the run has ended and its work is saved. (Python
        resets its own handlers to the default, fatal action while the interpreter shuts down, which
        killed a finished run that received USR2 at that moment; an ignored signal stays ignored.)"""
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """Put back the handlers these signals had before `listen` (e.g. submitit's requeue handler)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _local_code(self) -> int:
        if self.received is not None:
            return 3 if self.received == signal.SIGTERM else 2
        if self.deadline is None:
            return 0
        now = time.time()
        if self._last_poll is not None:
            self._step_seconds = max(self._step_seconds, now - self._last_poll)
        self._last_poll = now
        # leave room for the margin, the steps until ranks next agree, the one running and the save
        return 1 if now + self.margin_s + (self._every + 1) * self._step_seconds >= self.deadline else 0

    def poll(self, accelerator=None) -> StopReason | None:
        """Call once per step. One process decides at once; several agree every SYNC_EVERY steps only,
        so the collective (and its host sync) is not paid on every step."""
        multi = accelerator is not None and accelerator.num_processes > 1
        self._every = SYNC_EVERY if multi else 1
        code = self._local_code()
        if multi:
            self._polls += 1
            if self._polls % SYNC_EVERY:
                return None
            import torch  # only here: the CLI imports this module before torch, to own the signals early

            flag = torch.tensor([code], device=accelerator.device)
            code = int(accelerator.gather(flag).max())
        return _REASONS[code]

    @staticmethod
    def exit_status(reason: StopReason | None) -> int:
        """0 for a finished run; for a stopped one 75 or 143 (StopReason.exit_status), but 0 under
        torchrun's agent, which would otherwise restart the workers (see the module docstring)."""
        if reason is None or under_elastic_agent():
            return 0
        return StopReason(reason).exit_status
