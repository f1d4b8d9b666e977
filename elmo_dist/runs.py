"""The one place that reads saved runs: resolve a path, then load what it holds. It writes nothing
(the writing side is elmo_dist.runtime.checkpoint).

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
- import `DIR/` (`import-elmo`): the export layout, with `"format": "elmo-hdf5"` (or
  `"elmoformanylangs"`, whose import adds the char dictionary `chars.json`) in `export.json` and
  whether a softmax came along.

A checkpoint counts only when its `COMPLETE` marker lists every file with the right sha256
(elmo_dist.runtime.checkpoint writes it last); a damaged newest one gives way to the one before it.

Torch only: nothing here imports Accelerate, DeepSpeed or submitit, so code that only embeds text
stays light. Untrusted files are never unpickled: weights are safetensors, other tensor files load
with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from elmo_dist.config import ModelConfig, PretrainConfig, load
from elmo_dist.data.char_dict import CHARS_FILE, CharDictionary
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError, ConfigError
from elmo_dist.model import BiLM, build_bilm

COMPLETE = "COMPLETE"
EXPORT_META = "export.json"
WEIGHTS = "model.safetensors"
STEP_DIR = re.compile(r"^step-(\d+)$")
# what an export or import directory holds (elmo_dist.runtime.checkpoint.write_export)
EXPORT_FILES = (WEIGHTS, f".{WEIGHTS}.tmp", "config.yaml", "vocab.txt", "vocab.counts.npy", "corpus.json", CHARS_FILE,
                EXPORT_META)
IMPORT_FORMATS = ("elmo-hdf5", "elmoformanylangs")  # export.json's "format" of an import-elmo directory


def _sha256_of(f) -> str:
    h = hashlib.sha256()
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_of(f)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_steps(ckpt_root: Path) -> list[int]:
    """The steps of the `step-N` directories under `ckpt_root`, ascending (complete or not)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)))


class Vanished(Exception):
    """A checkpoint was removed while being read (another run rotating its checkpoints)."""


class Pinned:
    """Open handles on the files of one checkpoint or export. A running `pretrain` removes old
    checkpoints as it writes new ones (`checkpoint.keep_last`); a file removed while a reader holds
    it open stays readable through the handle, so a reader sees the checkpoint it chose whole,
    however long it takes to read."""

    def __init__(self, path: Path):
        self.path, self.files = path, {}

    def open(self, name: str):
        """Pin `name`; FileNotFoundError if it is gone."""
        if name not in self.files:
            self.files[name] = open(self.path / name, "rb")
        return self.files[name]

    def bytes(self, name: str) -> bytes:
        f = self.open(name)
        f.seek(0)
        return f.read()

    def text(self, name: str) -> str:
        return self.bytes(name).decode("utf-8")

    def fs_path(self, name: str) -> str:
        """A path that reaches the pinned file even after its removal (Linux's /proc/self/fd),
        for libraries that open files by name; elsewhere the file's own path."""
        proc = f"/proc/self/fd/{self.open(name).fileno()}"
        return proc if os.path.exists(proc) else str(self.path / name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def _pin_checkpoint(path: Path) -> tuple[Pinned, str | None]:
    """Pin every file of the checkpoint at `path` and check it: (the pins, None if complete and
    intact, else why not). Vanished if the directory disappears meanwhile."""
    pinned = Pinned(path)
    try:
        sums = json.loads(pinned.text(COMPLETE))["sha256"]
    except FileNotFoundError:
        if not path.is_dir():
            raise Vanished(str(path)) from None
        return pinned, "no COMPLETE marker (half-written)"
    except (ValueError, KeyError, UnicodeDecodeError):
        return pinned, "unreadable COMPLETE marker"
    for name, digest in sums.items():
        try:
            f = pinned.open(name)
        except FileNotFoundError:
            if not path.is_dir():
                raise Vanished(str(path)) from None
            return pinned, f"{name} is missing"
        if _sha256_of(f) != digest:
            return pinned, f"{name} does not match its checksum"
    return pinned, None


def verify(path: Path) -> str | None:
    """None if the checkpoint at `path` is complete and intact, else why not."""
    try:
        pinned, why = _pin_checkpoint(path)
    except Vanished:
        return "removed while being read"
    pinned.close()
    return why


_LOOKS = 5  # how often the newest checkpoint may change under a reader before it gives up


def _newest_pinned(run_dir: str | Path, log=None) -> Pinned | None:
    """The newest intact checkpoint of a run, pinned; None if it has none; CheckpointError if it has
    checkpoints but none is intact (never a silent fresh start). A checkpoint that disappears while
    being read, or a listing that changes meanwhile (a running pretrain committed a newer one and
    rotated older ones away), is looked at again, never called damaged. `log` hears about damaged
    ones that an older one stands in for."""
    root = checkpoint_dir(run_dir)
    for _ in range(_LOOKS):
        steps, problems = list_steps(root), []
        for step in reversed(steps):
            try:
                pinned, why = _pin_checkpoint(root / f"step-{step}")
            except Vanished:
                break
            if why is None:
                for problem in problems if log else ():  # said once, only when an older one stands in
                    log(f"skipping damaged checkpoint {problem}; using step-{step}")
                return pinned
            pinned.close()
            if list_steps(root) != steps:
                break
            problems.append(f"step-{step}: {why}")
        else:
            if steps:
                raise CheckpointError(f"{root}: no loadable checkpoint ({'; '.join(problems)})")
            return None
    raise CheckpointError(f"{root}: its checkpoints changed {_LOOKS} times while being read (a running pretrain "
                          "with a small checkpoint.keep_last?); name one checkpoint directory, or retry")


def find_latest(run_dir: str | Path, log=None) -> Path | None:
    """The newest intact checkpoint of a run (see `_newest_pinned`); None if it has none."""
    pinned = _newest_pinned(run_dir, log)
    if pinned is None:
        return None
    pinned.close()
    return pinned.path


def is_export(path: Path) -> bool:
    """A directory written by `export` or `import-elmo`: weights and config, no checkpoints."""
    return (path / EXPORT_META).is_file() and (path / WEIGHTS).is_file()


def _pin(path: Path) -> Pinned:
    """The directory that holds the weights, pinned: a run directory's newest checkpoint, a given
    checkpoint (verified), or an export/import directory itself."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if is_export(path):
        pinned = Pinned(path)
        for name in (EXPORT_META, WEIGHTS, "config.yaml"):
            try:
                pinned.open(name)
            except FileNotFoundError:
                raise CheckpointError(f"{path / name}: missing") from None
        return pinned
    if (path / COMPLETE).exists() or STEP_DIR.match(path.name):
        try:
            pinned, why = _pin_checkpoint(path)
        except Vanished:
            raise CheckpointError(f"{path}: removed while being read (rotated away by a running pretrain's "
                                  "checkpoint.keep_last?); name a newer checkpoint or the run directory") from None
        if why:
            raise CheckpointError(f"{path}: not a usable checkpoint ({why})")
        return pinned
    pinned = _newest_pinned(path)
    if pinned is None:
        raise CheckpointError(f"{path}: no checkpoints under {checkpoint_dir(path)}")
    return pinned


def resolve(path: str | Path) -> Path:
    """The directory that holds the weights (see `open_run`)."""
    pinned = _pin(Path(path))
    pinned.close()
    return pinned.path


def _json(pinned: Pinned, name: str) -> dict:
    try:
        return json.loads(pinned.text(name))
    except FileNotFoundError:
        raise CheckpointError(f"{pinned.path / name}: missing") from None
    except ValueError as e:
        raise CheckpointError(f"{pinned.path / name}: not valid JSON ({e})") from None


@dataclass
class SavedRun:
    """What a resolved run, checkpoint, export or import holds; its files stay pinned (`Pinned`)."""

    path: Path
    """The directory with `model.safetensors` and `config.yaml` (a checkpoint, export or import)."""
    home: Path
    """The directory with `vocab.txt` and `corpus.json`: the run directory, or `path` itself."""
    kind: str
    """checkpoint | export | import."""
    config: PretrainConfig
    step: int
    has_softmax: bool
    """False only for an import made without a softmax (the ELMo format has none)."""
    pinned: Pinned | None = None

    @property
    def config_text(self) -> str:
        """config.yaml as saved beside the weights."""
        return self.pinned.text("config.yaml") if self.pinned else (self.path / "config.yaml").read_text()

    def vocab(self) -> Vocabulary:
        return Vocabulary.load(self.home / "vocab.txt")

    def char_dictionary(self) -> CharDictionary | None:
        """The char dictionary of a model that reads one (model.char_vocab_size > 0), else None;
        CheckpointError if `chars.json` is missing or of another size than the char table."""
        size = self.config.model.char_vocab_size
        if not size:
            return None
        path = self.home / CHARS_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; model.char_vocab_size is {size}, so the model reads a char "
                                  "dictionary that must lie beside its weights")
        chars = CharDictionary.load(path)
        if len(chars) != size:
            raise CheckpointError(f"{path}: {len(chars):,} entries, but model.char_vocab_size is {size:,}")
        return chars

    def corpus_options(self) -> dict:
        """How the pretraining text was tokenized: {'tokenizer': ..., 'lowercase': ...} ({} if unknown)."""
        f = self.home / "corpus.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def source_files(self) -> list[Path]:
        """Every file a reader of this run takes in: the pinned checkpoint's or export's, and the
        run directory's own (vocab.txt, config.yaml, summary.json, ...)."""
        pinned = [self.path / name for name in self.pinned.files] if self.pinned else []
        return pinned + [p for p in self.home.iterdir() if p.is_file()]

    def weights(self) -> dict[str, torch.Tensor]:
        if self.pinned is None:
            return load_weights(self.path)
        return load_weights(self.path, source=self.pinned.fs_path(WEIGHTS))

    def build_model(self, device: str | torch.device = "cpu", vocab_size: int | None = None,
                    model_cfg: ModelConfig | None = None, vocab_file: Path | None = None) -> BiLM:
        """The biLM with these weights on `device`, in eval mode; `model_cfg` (default: the saved one)
        may change what doesn't shape the weights, such as dropout. CheckpointError if they don't fit;
        a vocabulary of another size than the softmax (`vocab_size` words from `vocab_file`, default
        the run's own vocab.txt) is named as the file that does not belong."""
        weights = self.weights()
        rows = weights.get("softmax.weight")
        size = vocab_size or len(self.vocab())
        if rows is not None and rows.shape[0] != size:
            raise CheckpointError(f"{vocab_file or self.home / 'vocab.txt'}: {size:,} words, but the softmax in "
                                  f"{self.path / WEIGHTS} has {rows.shape[0]:,} rows: this vocabulary does not "
                                  "belong to these weights")
        model = build_bilm(model_cfg or self.config.model, size)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise CheckpointError(f"{self.path}: weights do not fit its config ({detail})") from None
        return model.to(device).eval()


def open_run(path: str | Path) -> SavedRun:
    """Resolve `path` (a run directory: its newest intact checkpoint; a checkpoint; an export or
    import), pin its files and read its config, step and kind."""
    pinned = _pin(Path(path))
    found = pinned.path
    if is_export(found):
        meta = _json(pinned, EXPORT_META)
        kind = "import" if meta.get("format") in IMPORT_FORMATS else "export"
        home, step, softmax = found, int(meta.get("step", 0)), meta.get("softmax", True) is not False
    else:
        kind, home, softmax = "checkpoint", found.parent.parent, True
        step = int(_json(pinned, "trainer_state.json")["step"])
    try:
        cfg = load(PretrainConfig, found / "config.yaml", text=pinned.text("config.yaml"))
    except FileNotFoundError:
        raise CheckpointError(f"{found / 'config.yaml'}: missing") from None
    except ConfigError as e:
        raise CheckpointError(f"{found}: its config.yaml cannot be read ({e})") from None
    return SavedRun(path=found, home=home, kind=kind, config=cfg, step=step, has_softmax=softmax, pinned=pinned)


def load_weights(path: Path, name: str = WEIGHTS, source: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in `path/model.safetensors` (read from `source`, a pinned file's path, if
    given); CheckpointError for anything else."""
    try:
        return load_file(source or str(path / name))
    except Exception as e:  # safetensors raises several error types for foreign files
        raise CheckpointError(f"{path / name}: not a safetensors weight file ({e})") from None


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


def resolve_device(requested: str, option: str = "config key 'train.device'") -> str:
    """'auto' -> cuda when present, else cpu; 'cuda' without a GPU is a ConfigError naming `option`
    (the key or flag the user set)."""
    if requested == "cuda" and not torch.cuda.is_available():
        build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build of torch"
        raise ConfigError(f"{option} is cuda, but no CUDA device is available ({build}); use cpu or auto")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
