"""`prepare`'s plan of work: its options, the inputs cut into tasks, the scratch directory its
stages share, and the processes that run them.

    work = plan_work(opts)            # checks the inputs and --out, writes OUT/.prepare-work/work.json
    work = load_work(out)             # the same plan, in any process or Slurm job
    with Pool(4) as pool:
        pool.map(count_task, [(out, i) for i in range(len(work.tasks))])   # results in order

A task is a whole input, or a part of one: bytes [start, end) of a plain text or JSONL file (cut
at line ends every TASK_BYTES), row groups [start, end) of a Parquet file. Compressed files are
read whole, by one worker. The cut depends on the inputs alone, never on the number of workers:
that, and merging every result in task order, is what makes the output the same for every
`--workers` and for the Slurm array (elmo_dist.data.prepare).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from elmo_dist.data.compressed import packing
from elmo_dist.data.formats import input_format, parquet_field
from elmo_dist.data.reader import expand_inputs
from elmo_dist.data.tokenize import TOKENIZERS
from elmo_dist.data.vocab import SPECIALS, Vocabulary
from elmo_dist.errors import DataError, LaunchError, OutputError
from elmo_dist.files import inside, refuse_overwrite, writable_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # of the prepared directory (manifest, shards)
SPLITS = ("train", "heldout")
WORK = ".prepare-work"
# a plain text or JSONL file is cut into tasks of about this many bytes, at line ends
TASK_BYTES = 16 << 20
# a task's output is cut into segments of about this many tokens: each segment has its own word
# list, so a worker's memory is bounded by this, not by the size of its input
SEGMENT_TOKENS = 4_000_000
# below this much input, the work runs in this process: starting workers would cost more than it saves
MIN_PARALLEL_BYTES = 8 << 20


@dataclass
class PrepareOptions:
    inputs: list = field(default_factory=list)
    out: str = "data/prepared"
    tokenizer: str = "whitespace"
    lowercase: bool = False
    min_count: int = 1
    max_size: int = 0
    heldout_fraction: float = 0.01
    heldout_files: list = field(default_factory=list)
    shard_tokens: int = 10_000_000
    max_types: int = 20_000_000
    seed: int = 0
    text_field: str = "text"
    workers: int = 0  # 0: the cores this process may use


def default_workers() -> int:
    """The cores this process may run on (its affinity, which Slurm and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Work:
    """The plan: options, inputs and tasks; what every stage of prepare reads first."""
    out: Path
    options: dict
    files: list
    heldout_files: list
    tasks: list  # {"path", "format", "start", "end", "heldout"}
    segment_tokens: int
    input_bytes: int
    started: float

    @property
    def dir(self) -> Path:
        return self.out / WORK

    def opts(self) -> PrepareOptions:
        return PrepareOptions(**self.options)


def plan_work(opts: PrepareOptions) -> Work:
    """Check the options, inputs and output directory, cut the inputs into tasks and write the
    plan to OUT/.prepare-work/work.json (a fresh scratch directory: an old one is removed, with
    every old shard and the manifest, so that the directory reads as incomplete from here)."""
    files, heldout = _checked_inputs(opts)
    out = _checked_out(opts, files + heldout)
    (out / MANIFEST).unlink(missing_ok=True)
    clear_scratch(out)
    for old in list(out.glob("train/shard-*")) + list(out.glob("heldout/shard-*")):
        old.unlink()
    tasks = [t for p in files for t in _tasks(p, opts, False)] + [t for p in heldout for t in _tasks(p, opts, True)]
    size = sum(p.stat().st_size for p in files + heldout)
    work = Work(out, asdict(opts), [str(p) for p in files], [str(p) for p in heldout], tasks, SEGMENT_TOKENS,
                size, time.time())
    work.dir.mkdir()
    save_json(work.dir / "work.json", {k: v for k, v in asdict(work).items() if k != "out"})
    return work


def load_work(out: str | Path) -> Work:
    path = Path(out) / WORK / "work.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; the prepare stages need the plan that `elmo-dist submit prepare` "
                        "wrote (was the output directory removed or prepared again meanwhile?)")
    return Work(Path(out), **json.loads(path.read_text()))


def clear_scratch(out: Path) -> None:
    """Remove the scratch directory of this or an earlier prepare into `out`."""
    d = out / WORK
    if d.is_dir():
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def save_json(path: Path, obj) -> None:
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def scratch_vocab(work_dir: Path) -> Vocabulary:
    """The vocabulary the merge saved in the scratch directory. prepare wrote it, one word a line
    (words hold no whitespace), so it is read without Vocabulary.load's checks of a user's file,
    which take ten times as long on a vocabulary of 200k words."""
    tokens = (work_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    counts = work_dir / "vocab.counts.npy"
    return Vocabulary(tokens, np.load(counts, allow_pickle=False) if counts.is_file() else None)


def _tasks(path: Path, opts: PrepareOptions, heldout: bool) -> list[dict]:
    fmt = input_format(path)
    task = {"path": str(path), "format": fmt, "heldout": heldout}
    if fmt == "parquet":
        return [{**task, "start": a, "end": b} for a, b in _row_group_ranges(path, opts.text_field)]
    if packing(path) is not None:
        return [{**task, "start": 0, "end": None}]
    cuts = _line_cuts(path, path.stat().st_size, TASK_BYTES)
    return [{**task, "start": a, "end": b} for a, b in zip(cuts[:-1], cuts[1:])]


def _line_cuts(path: Path, size: int, step: int) -> list[int]:
    """0, the offsets just after the first "\\n" at or past every `step` bytes, and `size`."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + step < size:
            f.seek(cuts[-1] + step)
            at = f.tell()
            while (block := f.read(1 << 16)) and (nl := block.find(b"\n")) < 0:
                at += len(block)
            if not block or at + nl + 1 >= size:
                break
            cuts.append(at + nl + 1)
    return cuts + [size]


def _row_group_ranges(path: Path, text_field: str) -> list[tuple[int, int]]:
    """Runs of a Parquet file's row groups of about TASK_BYTES (uncompressed) each; the file's
    schema is checked for the text field here, before any work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read as Parquet ({e})") from None
    parquet_field(pf, path, text_field)
    ranges, start, size = [], 0, 0
    for g in range(pf.num_row_groups):
        size += pf.metadata.row_group(g).total_byte_size
        if size >= TASK_BYTES:
            ranges.append((start, g + 1))
            start, size = g + 1, 0
    return ranges + ([(start, pf.num_row_groups)] if start < pf.num_row_groups or not ranges else [])


def _checked_inputs(opts: PrepareOptions) -> tuple[list[Path], list[Path]]:
    files = expand_inputs(opts.inputs)
    heldout = expand_inputs(opts.heldout_files) if opts.heldout_files else []
    if not (0.0 <= opts.heldout_fraction < 1.0):
        raise DataError(f"--heldout-fraction must be in [0, 1), got {opts.heldout_fraction}")
    for flag, value, least in (("--shard-tokens", opts.shard_tokens, 1), ("--max-types", opts.max_types, 2),
                               ("--workers", opts.workers, 0)):
        if value < least:
            raise DataError(f"{flag} must be at least {least}, got {value}")
    if 0 < opts.max_size <= len(SPECIALS):
        raise DataError(f"--max-size {opts.max_size} leaves no room for words: the vocabulary's first "
                        f"{len(SPECIALS)} entries are <S>, </S>, <UNK>; use at least {len(SPECIALS) + 1}, "
                        f"or 0 for no limit")
    if opts.tokenizer not in TOKENIZERS:
        raise DataError(f"--tokenizer {opts.tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    if not opts.text_field or any(not key for key in opts.text_field.split(".")):
        raise DataError(f"--text-field {opts.text_field!r}: give a field name, dotted for a nested one (meta.text)")
    return files, heldout


def _checked_out(opts: PrepareOptions, inputs: list[Path]) -> Path:
    """The output directory, writable, and holding none of the inputs where prepare writes: its
    vocabulary, manifest and summary are replaced, and its old shards and scratch deleted."""
    out = Path(opts.out)
    names = ["vocab.txt", "vocab.counts.npy", MANIFEST, MANIFEST + ".tmp", "summary.json"]
    refuse_overwrite([out / name for name in names], inputs, "prepare")
    for path in inputs:
        if any(inside(path, out / s) for s in (*SPLITS, WORK)):
            raise OutputError(f"{path}: is also an input of `elmo-dist prepare`, inside {out / path.parent.name}, "
                              "which prepare empties; choose another --out")
    return writable_dir(out, "--out")


class Pool:
    """Calls a function on argument tuples in up to `workers` processes, results in the order of
    the arguments; the first failure (in that order) is raised, and the calls not yet started are
    dropped. One worker, or one call, runs in this process. The processes come from a forkserver
    (never a fork of this process, which may hold threads: torch's, a caller's) and live until
    `close`. Like every multiprocessing start method but fork, a worker imports the main script
    first: a script that calls prepare() must do so under `if __name__ == "__main__":`."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def map(self, fn, calls: list[tuple]) -> list:
        if self.workers <= 1 or len(calls) <= 1:
            return [fn(*args) for args in calls]
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("forkserver"))
        futures = [self._executor.submit(fn, *args) for args in calls]
        try:
            return [f.result() for f in futures]
        except BrokenProcessPool:
            raise LaunchError("a worker process of `prepare` died before it finished: killed for memory (try fewer "
                              "--workers), or, in a script of yours, prepare() ran again as the worker imported "
                              "the script (call it under `if __name__ == \"__main__\":`)") from None
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
