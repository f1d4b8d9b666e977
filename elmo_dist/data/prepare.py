"""`elmo-dist prepare`: stream text, JSONL or Parquet corpora into a vocabulary, token-id shards
and a held-out split.

    elmo-dist prepare 'corpus/*.txt.gz' --out data/prepared --min-count 3 --heldout-fraction 0.01
    elmo-dist prepare 'crawl/*.jsonl.zst' --text-field text --out data/crawl --workers 8

The work is done in stages, each in its own module, which share a scratch directory in the output
(OUT/.prepare-work, removed at the end). `prepare` runs them all in this process and a pool of
`--workers` processes; `elmo-dist submit prepare` (elmo_dist.launch.submit) runs the same
functions as Slurm jobs, through `run_count`, `run_merge`, `run_encode` and `run_finalize`.

1. plan (prepare_work): the inputs are checked and cut into tasks: whole files, or parts of big
   plain ones. The cut depends on the inputs alone.
2. count (prepare_count), the tasks in parallel: the text is read, tokenized, and each token
   written as an id into a word list of its own (one dict lookup a token).
3. merge (prepare_merge): held-out lines from each line's number in the corpus, the counts merged
   in task order, the vocabulary, where the shards end, and each segment's map to vocabulary ids.
4. encode (prepare_encode), the shards in parallel: a numpy remap of the ids, no text read again.
5. finalize: the vocabulary's counts and the manifest, written last and atomically: a directory
   without `manifest.json` is incomplete.

Since every step takes the tasks' results in task order, the output is byte for byte the same
for any number of workers and for the Slurm array. Memory stays flat in the corpus size: a worker
holds one segment (about 4M tokens) and its word list; the merge holds the merged word list,
pruned to `--max-types // 2` words when it passes `--max-types` (counts are then inexact, which
the manifest records); a shard writer holds one shard (about 8 bytes a token of `--shard-tokens`).
Disk: 4 bytes a token of scratch ids until the end, and 4 of shards.

Each shard (about `--shard-tokens` tokens, ending on a sentence boundary) is one int32 stream
`<S> w1 .. wn </S> <S> ...`; a word outside the vocabulary gets a shard-local id >= len(vocab),
whose spelling is in the shard's `.oov.txt`, so the char CNN always sees its real characters.
"""
from __future__ import annotations

from pathlib import Path

from elmo_dist.data import prepare_work
from elmo_dist.data.prepare_count import count_task
from elmo_dist.data.prepare_encode import OOV_WARN_RATE, encode_shards, finalize, shard_jobs
from elmo_dist.data.prepare_merge import heldout_mask, merge
from elmo_dist.data.prepare_work import (
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    Pool,
    PrepareOptions,
    Work,
    default_workers,
    load_work,
    plan_work,
)
from elmo_dist.errors import DiskFull, UserError
from elmo_dist.files import free_bytes, human, looks_full, remove

__all__ = ["FORMAT_VERSION", "MANIFEST", "OOV_WARN_RATE", "SPLITS", "PrepareOptions", "heldout_mask", "prepare",
           "run_count", "run_encode", "run_finalize", "run_merge"]


def prepare(opts: PrepareOptions) -> dict:
    """Every stage, in this process and `opts.workers` processes (0: the cores this process may
    use; one for inputs under MIN_PARALLEL_BYTES); returns the manifest."""
    work = plan_work(opts)
    small = work.input_bytes < prepare_work.MIN_PARALLEL_BYTES
    workers = 1 if small else opts.workers or default_workers()
    try:
        with Pool(workers) as pool:  # on the way out, it waits for the workers: none writes any more
            pool.map(count_task, [(str(work.out), i) for i in range(len(work.tasks))])
            merge(work, pool)
            pool.map(encode_shards, [(str(work.out), [job]) for job in shard_jobs(work)])
        return finalize(work)
    except BaseException as e:
        failed = _failed(work, e)
        if failed is None:
            raise
        raise failed from None


def _failed(work: Work, e: BaseException) -> DiskFull | None:
    """Remove what this prepare wrote; a DiskFull for a disk that filled up (the sizes a rerun
    needs), None to re-raise `e` as it is."""
    ids = sum(p.stat().st_size for p in work.dir.glob("*.*ids") if p.is_file()) // 4 if work.dir.is_dir() else 0
    remove(work.dir, *work.out.glob("train/shard-*"), *work.out.glob("heldout/shard-*"))
    if isinstance(e, UserError) or not isinstance(e, Exception) or not looks_full(e, work.out):
        return None
    return DiskFull(f"{work.out}: the disk is full ({human(free_bytes(work.out))} free, {ids:,} tokens' ids written); "
                    "prepare needs about 8 bytes a corpus token until it ends: 4 for the scratch ids (removed at "
                    f"the end) and 4 for the shards, {human(8 * ids)} for the tokens read so far alone")


# -- the stages one at a time, for Slurm jobs (elmo_dist.launch.submit) ----------------------------
def run_count(out: str | Path, tasks: list[int], workers: int = 1) -> int:
    """Count the tasks numbered `tasks` of the plan in OUT (written by `plan_work`); how many."""
    with Pool(workers) as pool:
        pool.map(count_task, [(str(out), i) for i in tasks])
    return len(tasks)


def run_merge(out: str | Path, workers: int = 1) -> dict:
    """Merge every task's counts; the merge's summary (vocabulary size, shard ends)."""
    with Pool(workers) as pool:
        return merge(load_work(out), pool)


def run_encode(out: str | Path, part: int, parts: int, workers: int = 1) -> int:
    """Write part `part` of `parts` (a contiguous share of the shards); how many shards."""
    jobs = shard_jobs(load_work(out))
    mine = jobs[part * len(jobs) // parts:(part + 1) * len(jobs) // parts]
    with Pool(workers) as pool:
        pool.map(encode_shards, [(str(out), [job]) for job in mine])
    return len(mine)


def run_finalize(out: str | Path) -> dict:
    """The vocabulary and manifest once every shard is written; the manifest."""
    return finalize(load_work(out))

