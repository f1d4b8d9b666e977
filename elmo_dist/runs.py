"""The one place that reads saved runs: resolve a path, then load what it holds.

    from elmo_dist.runs import open_run
    saved = open_run("runs/debug")        # a run directory means its newest complete checkpoint
    saved.kind, saved.step                 # 'checkpoint', 1000
    model = saved.build_model("cpu")       # the biLM with its weights, in eval mode
    vocab = saved.vocab()

Every layout elmo-dist writes is accepted wherever a command takes a run:

- run directory `RUN/` (`pretrain`): `config.yaml`, `vocab.txt`, `corpus.json`, `checkpoints/step-N/`;
- checkpoint `RUN/checkpoints/step-N/` (`pretrain`): `model.safetensors`, `trainer_state.json`,
  `config.yaml`, `COMPLETE`;
- export `DIR/` (`export`): `model.safetensors`, `config.yaml`, `vocab.txt`, `corpus.json`, `export.json`;
- import `DIR/` (`import-elmo`): the export layout, with `"format": "elmo-hdf5"` in `export.json`
  and whether a softmax came along.

A checkpoint counts only when its `COMPLETE` marker lists every file with the right sha256
(train/checkpoint.py writes it last); a damaged newest one gives way to the one before it.

Torch only: nothing here imports Accelerate, DeepSpeed or submitit, so code that only embeds text
stays light. Untrusted files are never unpickled: weights are safetensors, other tensor files load
with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from elmo_dist.config import Config, ModelConfig, load_config, save_config
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError, ConfigError
from elmo_dist.model import BiLM, build_bilm

COMPLETE = "COMPLETE"
EXPORT_META = "export.json"
WEIGHTS = "model.safetensors"
STEP_DIR = re.compile(r"^step-(\d+)$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_steps(ckpt_root: Path) -> list[int]:
    """The steps of the `step-N` directories under `ckpt_root`, ascending (complete or not)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)))


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
        if sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def find_latest(run_dir: str | Path, log=None) -> Path | None:
    """The newest intact checkpoint of a run; None if it has none; CheckpointError if it has
    checkpoints but none is intact (never a silent fresh start). `log` hears about skipped ones."""
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
    """A directory written by `export` or `import-elmo`: weights and config, no checkpoints."""
    return (path / EXPORT_META).is_file() and (path / WEIGHTS).is_file()


def resolve(path: str | Path) -> Path:
    """The directory that holds the weights: a run directory's newest checkpoint, a given
    checkpoint (verified), or an export/import directory itself."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if is_export(path):
        return path
    if (path / COMPLETE).exists() or STEP_DIR.match(path.name):
        why = verify(path)
        if why:
            raise CheckpointError(f"{path}: not a usable checkpoint ({why})")
        return path
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoints under {checkpoint_dir(path)}")
    return latest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


@dataclass
class SavedRun:
    """What a resolved run, checkpoint, export or import holds."""

    path: Path
    """The directory with `model.safetensors` and `config.yaml` (a checkpoint, export or import)."""
    home: Path
    """The directory with `vocab.txt` and `corpus.json`: the run directory, or `path` itself."""
    kind: str
    """checkpoint | export | import."""
    config: Config
    step: int
    has_softmax: bool
    """False only for an import made without a softmax (the ELMo format has none)."""

    def vocab(self) -> Vocabulary:
        return Vocabulary.load(self.home / "vocab.txt")

    def corpus_options(self) -> dict:
        """How the pretraining text was tokenized: {'tokenizer': ..., 'lowercase': ...} ({} if unknown)."""
        f = self.home / "corpus.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def weights(self) -> dict[str, torch.Tensor]:
        return load_weights(self.path)

    def build_model(self, device: str | torch.device = "cpu", vocab_size: int | None = None,
                    model_cfg: ModelConfig | None = None) -> BiLM:
        """The biLM with these weights on `device`, in eval mode; `model_cfg` (default: the saved one)
        may change what doesn't shape the weights, such as dropout. CheckpointError if they don't fit."""
        model = build_bilm(model_cfg or self.config.model, vocab_size or len(self.vocab()))
        try:
            model.load_state_dict(self.weights())
        except RuntimeError as e:
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise CheckpointError(f"{self.path}: weights do not fit its config ({detail})") from None
        return model.to(device).eval()


def open_run(path: str | Path) -> SavedRun:
    """Resolve `path` (see `resolve`) and read its config, step and kind."""
    found = resolve(path)
    if is_export(found):
        meta = _read_json(found / EXPORT_META)
        kind = "import" if meta.get("format") == "elmo-hdf5" else "export"
        home, step, softmax = found, int(meta.get("step", 0)), meta.get("softmax", True) is not False
    else:
        kind, home, softmax = "checkpoint", found.parent.parent, True
        step = int(_read_json(found / "trainer_state.json")["step"])
    try:
        cfg = load_config(found / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{found}: its config.yaml cannot be read ({e})") from None
    return SavedRun(path=found, home=home, kind=kind, config=cfg, step=step, has_softmax=softmax)


def load_weights(path: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The state dict in `path/model.safetensors`; CheckpointError for anything else."""
    try:
        return load_file(str(path / name))
    except Exception as e:  # safetensors raises several error types for foreign files
        raise CheckpointError(f"{path / name}: not a safetensors weight file ({e})") from None


def write_weights(directory: Path, state_dict: dict, name: str = WEIGHTS) -> None:
    """Save a state dict as safetensors, floating-point tensors as fp32 (whatever the training precision)."""
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(directory / name))


def write_export(out: Path, weights: dict, cfg: Config, meta: dict, home: Path | None = None,
                 vocab: Vocabulary | None = None) -> Path:
    """Write the export layout: weights, config, the vocabulary and tokenizer record (copied from a
    run's `home`, or `vocab` saved), then `export.json` last, since its presence makes the directory
    an export that other commands accept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_META).unlink(missing_ok=True)  # incomplete until rewritten below
    write_weights(out, weights, name=f".{WEIGHTS}.tmp")
    (out / f".{WEIGHTS}.tmp").replace(out / WEIGHTS)
    save_config(cfg, out / "config.yaml")
    for name in ("vocab.txt", "vocab.counts.npy", "corpus.json"):
        src = home / name if home is not None else None
        if src is not None and src.is_file() and src.resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)
    if vocab is not None:
        vocab.save(out / "vocab.txt")
    (out / EXPORT_META).write_text(json.dumps(meta, indent=1))
    return out


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


def resolve_device(requested: str) -> str:
    """'auto' -> cuda when present, else cpu; 'cuda' without a GPU is a ConfigError."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device' is cuda, but no CUDA device is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
