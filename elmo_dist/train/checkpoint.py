"""Crash-safe checkpoints in `RUN_DIR/checkpoints/step-N/`.

A checkpoint is written into a hidden temporary directory, every file fsynced, then `COMPLETE`
(the sha256 of every file) is written last and the directory is renamed into place. A directory
without a valid `COMPLETE` is never loaded; if the newest is damaged, the one before it is used;
if checkpoints exist but none can be loaded, that is an error, never a silent fresh start.

Files: `model.safetensors` (fp32 weights), `optimizer.pt`, `rng-rankR.pt`, `state-rankR.pt`
(tensors only, read back with `weights_only=True`), `trainer_state.json` and `config.yaml`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from elmo_dist.errors import CheckpointError

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


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


def write_model(tmp: Path, state_dict: dict, name: str = "model.safetensors") -> None:
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(tmp / name))


def commit(tmp: Path, step: int, keep_last: int) -> Path:
    """Checksum, mark complete, rename into place and drop checkpoints beyond the newest `keep_last`."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for p in files:
        _fsync(p)
    marker = {"step": step, "sha256": {str(p.relative_to(tmp)): _sha256(p) for p in files}}
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


def list_steps(ckpt_root: Path) -> list[int]:
    if not ckpt_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)))


def verify(path: Path) -> str | None:
    """None if the checkpoint at `path` is complete and intact, else why not."""
    marker = path / COMPLETE
    if not marker.is_file():
        return "no COMPLETE marker (half-written)"
    try:
        sums = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError):
        return "unreadable COMPLETE marker"
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def find_latest(run_dir: str | Path, log=None) -> Path | None:
    """The newest intact checkpoint; raise if there are checkpoints but none is intact."""
    root = checkpoint_dir(run_dir)
    steps = list_steps(root)
    problems = []
    for step in reversed(steps):
        path = root / f"step-{step}"
        why = verify(path)
        if why is None:
            for problem in problems if log else ():  # said once, only when an older one stands in
                log(f"skipping damaged checkpoint {problem}; using {path.name}")
            return path
        problems.append(f"step-{step}: {why}")
    if steps:
        raise CheckpointError(f"{root}: no loadable checkpoint ({'; '.join(problems)})")
    return None


def is_export(path: Path) -> bool:
    """A directory written by `elmo-dist export`: weights and config, no checkpoints."""
    return (path / "export.json").is_file() and (path / "model.safetensors").is_file()


def has_softmax(found: Path) -> bool:
    """False only for an `import-elmo` directory imported without a softmax (the format has none)."""
    meta = found / "export.json"
    return not (meta.is_file() and json.loads(meta.read_text()).get("softmax") is False)


def run_dir_of(found: Path) -> Path:
    """The run (or export) directory that holds vocab.txt for a resolved checkpoint."""
    return found if is_export(found) else found.parent.parent


def resolve(path: str | Path) -> Path:
    """A run directory (its newest checkpoint), a checkpoint directory or an export, verified."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if is_export(path):
        return path
    if (path / COMPLETE).exists() or _STEP_DIR.match(path.name):
        why = verify(path)
        if why:
            raise CheckpointError(f"{path}: not a usable checkpoint ({why})")
        return path
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoints under {checkpoint_dir(path)}")
    return latest


def load_model_state(path: Path) -> dict:
    try:
        return load_file(str(path / "model.safetensors"))
    except Exception as e:  # safetensors raises several error types for foreign files
        raise CheckpointError(f"{path / 'model.safetensors'}: not a safetensors weight file ({e})") from None


def load_tensors(path: Path):
    """A torch file of tensors and plain containers; refuses anything that needs unpickling code."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message advises turning the safe loader off; ours must not repeat that advice
        detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")),
                      str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
        raise CheckpointError(f"{path}: cannot be loaded safely: not a plain tensor file, and elmo-dist never "
                              f"runs the code a pickle asks for ({detail})") from None
