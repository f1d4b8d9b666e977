"""The checkpointer: the one object that saves, finds, loads, rotates, verifies and sets aside the
checkpoints of a run directory, for pretraining and fine-tuning alike.

    ckpt = Checkpointer(run_dir, keep_last=3, is_main=acc.is_main_process, broadcast=..., barrier=...)
    path = ckpt.newest(log=log.warning)            # the newest intact step-N, or None
    saved = ckpt.load(path, rank)                  # trainer state, weights, optimizer, RNG, LSTM state
    ckpt.save(step, write_files, tensor_bytes)     # every rank's files, then COMPLETE, then rotation
    ckpt.set_aside(path)                           # a checkpoint never to resume: rejected-step-N

Crash safety: a checkpoint is written into a hidden temporary directory, every file fsynced, then
`COMPLETE` (the sha256 of every file) is written last and the directory is renamed into place. A
directory without a valid `COMPLETE` is never loaded (elmo_dist.runs verifies it); leftovers of a
save that was killed are removed at the next start; a save the disk can't hold is refused before
anything is written, and one that fails half-way is removed, leaving the older checkpoints intact.

A pretraining checkpoint holds, from the objects' own state dicts:
- `model.safetensors` (fp32 weights) and `config.yaml` (the resolved run config);
- `trainer_state.json`: `Trainer.state_dict()` (step, tokens, layout, and the batcher's and the
  NaN guard's own state dicts);
- `optimizer.pt` (DDP; ZeRO keeps its shards in `deepspeed/`), `rng-rankR.pt` and `state-rankR.pt`
  (per-rank random streams and LSTM state): tensors only, read back with `weights_only=True`.
A fine-tuning checkpoint (its best epoch) holds `model.safetensors`, `config.yaml` and
`trainer_state.json`. This module also writes the export layout that elmo_dist.runs reads.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from elmo_dist.config import PretrainConfig, save_config
from elmo_dist.data.char_dict import CHARS_FILE, CharDictionary
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import DiskFull
from elmo_dist.files import disk_full, free_bytes, human, looks_full, remove
from elmo_dist.runs import (
    COMPLETE,
    EXPORT_META,
    WEIGHTS,
    checkpoint_dir,
    find_latest,
    list_steps,
    load_tensors,
    load_weights,
    sha256,
    verify,
)

# beyond the weights and optimizer state: per-rank RNG and LSTM state, JSON, the COMPLETE marker
_SMALL_FILES = 1 << 20


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights(directory: Path, state_dict: dict, name: str = WEIGHTS) -> None:
    """Save a state dict as safetensors, floating-point tensors as fp32 (whatever the training precision)."""
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(directory / name))


def tensor_bytes(model: torch.nn.Module, optimizer, zero: bool) -> int:
    """fp32 weights plus the optimizer's state tensors: the bulk of a checkpoint. Under ZeRO, 16
    bytes a parameter (fp32 weights, fp32 master copy and two Adam moments, whatever the training
    precision)."""
    n = sum(p.numel() for p in model.parameters())
    if zero:
        return 16 * n
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t)) if optimizer is not None else 0
    return 4 * n + state


@dataclass
class Loaded:
    """What `Checkpointer.load` read: the trainer's state and, for this rank, its random streams and
    carried LSTM state (None for a rank the checkpoint didn't have)."""

    path: Path
    state: dict
    rng: dict | None
    lstm: list | None

    def weights(self) -> dict[str, torch.Tensor]:
        return load_weights(self.path)

    def optimizer(self) -> dict:
        return load_tensors(self.path / "optimizer.pt")


class Checkpointer:
    """The checkpoints of `run_dir` (under `checkpoints/`), kept to the newest `keep_last`.

    With several processes, `broadcast` (the main process's object, on every process) and
    `barrier` make every rank agree and take part in a save; with the defaults only the main
    process is expected to call `save`.
    """

    def __init__(self, run_dir: str | Path, keep_last: int, is_main: bool = True,
                 broadcast: Callable = lambda obj: obj, barrier: Callable[[], None] = lambda: None):
        self.run_dir, self.root = Path(run_dir), checkpoint_dir(run_dir)
        self.keep_last, self.is_main = keep_last, is_main
        self.broadcast, self.barrier = broadcast, barrier

    # -- finding -------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return list_steps(self.root)

    def newest(self, log=None) -> Path | None:
        """The newest intact checkpoint; None if there is none; CheckpointError if there are some
        but none is intact (never a silent fresh start). `log` hears about damaged ones skipped."""
        return find_latest(self.run_dir, log)

    def verify(self, path: Path) -> str | None:
        """None if the checkpoint at `path` is complete and intact, else why not."""
        return verify(path)

    # -- loading -------------------------------------------------------------------------------
    def load(self, path: Path, rank: int = 0) -> Loaded:
        state = json.loads((path / "trainer_state.json").read_text())
        rng_file, lstm_file = path / f"rng-rank{rank}.pt", path / f"state-rank{rank}.pt"
        rng = load_tensors(rng_file) if rng_file.is_file() else None
        lstm = load_tensors(lstm_file)["lstm"] if lstm_file.is_file() else None
        return Loaded(path, state, rng, lstm)

    # -- saving --------------------------------------------------------------------------------
    def remove_partial(self) -> list[str]:
        """Delete temporary directories left by a save that was killed (main process); their names."""
        stale = [p for p in self.root.glob(".tmp-step-*") if p.is_dir()] if self.is_main and self.root.is_dir() else []
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in stale]

    def save(self, step: int, write: Callable[[Path], None], tensor_bytes: int) -> Path:
        """Checkpoint `step`: `write(tmp)` writes this process's files into the temporary directory
        (every process that calls `save` does); then the main process checksums, renames and
        rotates. DiskFull before anything is written if the disk can't hold the checkpoint (about
        the newest one's size, else `tensor_bytes` and the small files), or after a write that failed
        for want of space; the half-written checkpoint is then removed."""
        needed = self._expected_bytes(tensor_bytes)
        refusal = self._no_room(step, needed) if self.is_main else None
        refusal = self.broadcast(refusal)
        if refusal:
            raise DiskFull(refusal)
        tmp = self.root / f".tmp-step-{step}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        try:
            write(tmp)
            self.barrier()
            final = self._commit(tmp, step) if self.is_main else self.root / f"step-{step}"
        except Exception as e:
            raise self._failed(e, tmp, step, needed) from None
        self.barrier()
        return final

    def _commit(self, tmp: Path, step: int) -> Path:
        """Checksum, mark complete, rename into place and drop checkpoints beyond the newest `keep_last`."""
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for p in files:
            _fsync(p)
        marker = {"step": step, "sha256": {str(p.relative_to(tmp)): sha256(p) for p in files}}
        (tmp / COMPLETE).write_text(json.dumps(marker, indent=1))
        _fsync(tmp / COMPLETE)
        final = self.root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(self.root)
        for old in self.steps()[:-self.keep_last]:
            shutil.rmtree(self.root / f"step-{old}", ignore_errors=True)
        return final

    def set_aside(self, path: Path) -> Path:
        """Rename a checkpoint that must never be resumed to `rejected-step-N` (kept for inspection)."""
        aside = path.with_name(f"rejected-{path.name}")
        path.rename(aside)
        return aside

    # -- disk space ----------------------------------------------------------------------------
    def _expected_bytes(self, tensor_bytes: int) -> int:
        steps = self.steps()
        if steps:
            try:
                return sum(p.stat().st_size for p in (self.root / f"step-{steps[-1]}").rglob("*") if p.is_file())
            except OSError:  # rotated away meanwhile
                pass
        return tensor_bytes + _SMALL_FILES

    def _no_room(self, step: int, needed: int) -> str | None:
        free = free_bytes(self.root)
        if needed <= free:
            return None
        return (f"{self.root}: not enough disk space for the checkpoint of step {step}: it needs about "
                f"{human(needed)}, {human(free)} free. {self._after_failure()}")

    def _after_failure(self) -> str:
        steps = self.steps()
        older = f"step-{steps[-1]} and older checkpoints are intact; " if steps else ""
        return (f"Nothing was saved; {older}free some space (or lower checkpoint.keep_last) and run the same "
                "command again")

    def _failed(self, exc: Exception, tmp: Path, step: int, needed: int) -> Exception:
        """After a save failed half-way: the temporary directory removed, and a full disk made a
        DiskFull line (torch's zip writer reports one as "unexpected pos", with no errno)."""
        full = looks_full(exc, tmp.parent, needed)  # before the removal gives the space back
        remove(tmp)
        if not full:
            return exc
        return DiskFull(f"{self.root}: the disk filled up while writing the checkpoint of step {step} (it needs "
                        f"about {human(needed)}, {human(free_bytes(tmp.parent))} free). {self._after_failure()}")


def write_trainer_files(tmp: Path, weights: dict, trainer_state: dict, cfg, optimizer_state: dict | None) -> None:
    """The main process's files of a checkpoint: weights, trainer state, config and (without ZeRO)
    the optimizer."""
    write_weights(tmp, weights)
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    save_config(cfg, tmp / "config.yaml")


def write_rank_files(tmp: Path, rank: int, rng: dict, lstm: list) -> None:
    """One process's random streams and carried LSTM state (a flat list of tensors)."""
    torch.save(rng, tmp / f"rng-rank{rank}.pt")
    torch.save({"lstm": lstm}, tmp / f"state-rank{rank}.pt")


def write_export(out: Path, weights: dict, cfg: PretrainConfig, meta: dict, home: Path | None = None,
                 vocab: Vocabulary | None = None, chars: CharDictionary | None = None) -> Path:
    """Write the export layout (elmo_dist.runs): weights, config, the vocabulary, char dictionary and
    tokenizer record (copied from a run's `home`, or `vocab` and `chars` saved), then `export.json`
    last, since its presence makes the directory an export that other commands accept. A full disk
    is one DiskFull line, and the weights' temporary file is removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_META).unlink(missing_ok=True)  # incomplete until rewritten below
    tmp = out / f".{WEIGHTS}.tmp"
    try:
        write_weights(out, weights, name=tmp.name)
        tmp.replace(out / WEIGHTS)
        save_config(cfg, out / "config.yaml")
        for name in ("vocab.txt", "vocab.counts.npy", "corpus.json", CHARS_FILE):
            src = home / name if home is not None else None
            if src is not None and src.is_file() and src.resolve() != (out / name).resolve():
                shutil.copyfile(src, out / name)
        if vocab is not None:
            vocab.save(out / "vocab.txt")
        if chars is not None:
            chars.save(out / CHARS_FILE)
        (out / EXPORT_META).write_text(json.dumps(meta, indent=1))
    except Exception as e:
        remove(tmp, out / EXPORT_META)
        needed = sum(4 * v.numel() for v in weights.values())
        if looks_full(e, out, needed):
            raise disk_full(out, "the export", needed) from None
        raise
    return out
