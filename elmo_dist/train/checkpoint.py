"""Crash-safe checkpoints in `RUN_DIR/checkpoints/step-N/`: the writing side (elmo_dist.runs reads them).

A checkpoint is written into a hidden temporary directory, every file fsynced, then `COMPLETE`
(the sha256 of every file) is written last and the directory is renamed into place. A directory
without a valid `COMPLETE` is never loaded (elmo_dist.runs.verify).

One structure per checkpoint, from the objects' own state dicts:
- `model.safetensors` (fp32 weights) and `config.yaml` (the resolved run config);
- `trainer_state.json`: `Trainer.state_dict()` (step, tokens, layout, and the batcher's and the
  NaN guard's own state dicts);
- `optimizer.pt` (DDP; ZeRO keeps its shards in `deepspeed/`), `rng-rankR.pt` and `state-rankR.pt`
  (per-rank random streams and LSTM state): tensors only, read back with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from elmo_dist.config import Config, save_config
from elmo_dist.errors import DiskFull
from elmo_dist.files import free_bytes, human, looks_full, remove
from elmo_dist.runs import COMPLETE, checkpoint_dir, list_steps, load_tensors, sha256, write_weights

FORMAT = 2  # trainer_state.json layout; 1 = the flat layout of elmo-dist before state dicts


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# beyond the weights and optimizer state: per-rank RNG and LSTM state, JSON, the COMPLETE marker
_SMALL_FILES = 1 << 20


def size_of(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tensor_bytes(model: torch.nn.Module, optimizer, zero: bool) -> int:
    """fp32 weights plus the optimizer's state tensors: the bulk of a checkpoint. Under ZeRO, 16
    bytes a parameter (fp32 weights, fp32 master copy and two Adam moments, whatever the training
    precision)."""
    n = sum(p.numel() for p in model.parameters())
    if zero:
        return 16 * n
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return 4 * n + state


def expected_bytes(run_dir: str | Path, tensor_bytes: int) -> int:
    """What the next checkpoint will take on disk: the newest one's size when there is one (the
    same files again), else `tensor_bytes` (weights and optimizer state) plus the small files."""
    root = checkpoint_dir(run_dir)
    steps = list_steps(root)
    if steps:
        try:
            return size_of(root / f"step-{steps[-1]}")
        except OSError:  # rotated away meanwhile
            pass
    return tensor_bytes + _SMALL_FILES


def room_for(run_dir: str | Path, step: int, needed: int) -> str | None:
    """Why the checkpoint of `step` can't be written (not enough free space), or None."""
    root = checkpoint_dir(run_dir)
    free = free_bytes(root)
    if needed <= free:
        return None
    return (f"{root}: not enough disk space for the checkpoint of step {step}: it needs about {human(needed)}, "
            f"{human(free)} free. {_after_failure(run_dir)}")


def _after_failure(run_dir) -> str:
    steps = list_steps(checkpoint_dir(run_dir))
    older = f"step-{steps[-1]} and older checkpoints are intact; " if steps else ""
    return f"Nothing was saved; {older}free some space (or lower checkpoint.keep_last) and run the same command again"


def failed_write(exc: Exception, tmp: Path, run_dir: str | Path, step: int, needed: int) -> Exception:
    """After a save failed half-way: the temporary directory removed, and a full disk made a
    DiskFull line (torch's zip writer reports one as "unexpected pos", with no errno)."""
    full = looks_full(exc, tmp.parent, needed)  # before the removal gives the space back
    remove(tmp)
    if not full:
        return exc
    free = human(free_bytes(tmp.parent))
    return DiskFull(f"{checkpoint_dir(run_dir)}: the disk filled up while writing the checkpoint of step {step} "
                    f"(it needs about {human(needed)}, {free} free). {_after_failure(run_dir)}")


def begin(run_dir: str | Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of `step`."""
    tmp = checkpoint_dir(run_dir) / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def remove_partial(run_dir: str | Path) -> list[str]:
    """Delete temporary directories left by a save that was killed; their names, for the log."""
    root = checkpoint_dir(run_dir)
    stale = [p for p in root.glob(".tmp-step-*") if p.is_dir()] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def write_main(tmp: Path, weights: dict, trainer_state: dict, cfg: Config, optimizer_state: dict | None) -> None:
    """The main process's files: weights, trainer state, config and (without ZeRO) the optimizer."""
    write_weights(tmp, weights)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"format": FORMAT, **trainer_state}, indent=1))
    save_config(cfg, tmp / "config.yaml")


def write_rank(tmp: Path, rank: int, rng: dict, lstm: list) -> None:
    """One process's random streams and carried LSTM state (a flat list of tensors)."""
    torch.save(rng, tmp / f"rng-rank{rank}.pt")
    torch.save({"lstm": lstm}, tmp / f"state-rank{rank}.pt")


def read_trainer_state(path: Path) -> dict:
    """`trainer_state.json` in the current layout (a format-1 checkpoint is upgraded here, once)."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("format", 1) == 1:
        state = {"step": state["step"], "tokens": state["tokens"], "world_size": state["world_size"],
                 "zero_stage": state.get("zero_stage", 0), "fp16_skipped": state.get("fp16_skipped", 0),
                 "data": state["data"], "guard": {"skipped": state.get("nonfinite_skipped", 0), "streak": 0}}
    return state


def read_rank(path: Path, rank: int) -> tuple[dict | None, list | None]:
    """(random streams, flat LSTM state) of one process; None for a rank the checkpoint didn't have."""
    rng_file, state_file = path / f"rng-rank{rank}.pt", path / f"state-rank{rank}.pt"
    rng = load_tensors(rng_file) if rng_file.is_file() else None
    lstm = load_tensors(state_file)["lstm"] if state_file.is_file() else None
    return rng, lstm


def commit(tmp: Path, step: int, keep_last: int) -> Path:
    """Checksum, mark complete, rename into place and drop checkpoints beyond the newest `keep_last`."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for p in files:
        _fsync(p)
    marker = {"step": step, "sha256": {str(p.relative_to(tmp)): sha256(p) for p in files}}
    (tmp / COMPLETE).write_text(json.dumps(marker, indent=1))
    _fsync(tmp / COMPLETE)
    final = tmp.parent / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(tmp.parent)
    for old in list_steps(tmp.parent)[:-keep_last]:
        shutil.rmtree(tmp.parent / f"step-{old}", ignore_errors=True)
    return final
