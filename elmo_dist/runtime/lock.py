"""One owner per run directory: an exclusive lock on `RUN_DIR/.lock` for as long as a command writes there.

    with RunDirLock(run_dir):          # raises RunDirBusy naming the owner if another process holds it
        train()

Two runs on one directory would delete each other's temporary checkpoints and replace each
other's `step-N`, `config.yaml` and `summary.json`. The lock is `flock(2)`, so the kernel releases
it when the owning process exits, however it dies (SIGKILL included): a stale lock file is
harmless, and the next run simply takes it. The file's text names the owner (process id, host,
start time) for the refusal message; it is never deleted, since deleting a lock file another
process is about to open is itself a race.

flock is advisory and per host on some network file systems; runs on two different nodes that
share a run directory over NFS are not guaranteed to see each other's lock.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from elmo_dist.errors import CheckpointError
from elmo_dist.files import unwritable

LOCK_NAME = ".lock"


class RunDirBusy(CheckpointError):
    """Another process owns the run directory."""


class RunDirLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (a no-op if this object holds it), or raise RunDirBusy naming the process that does."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only run directory (someone else's, or a read-only mount)
            raise unwritable(self.path.parent, "train.run_dir", e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(fd)
            raise RunDirBusy(f"{self.path.parent}: in use by another run ({owner}); wait for it to finish, stop it, "
                             "or choose another train.run_dir") from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    __del__ = release  # an owner that is dropped (e.g. a Trainer used only for train_step) lets go

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def own_run_dir(lock: RunDirLock, is_main: bool, broadcast=lambda obj: obj) -> None:
    """The main process takes `lock`; `broadcast` (the main process's object, on every process) lets
    every process refuse with the main one's message, naming the owner, when another run holds it."""
    message = None
    if is_main:
        try:
            lock.acquire()
        except RunDirBusy as e:
            message = str(e)
    message = broadcast(message)
    if message:
        raise RunDirBusy(message)
