"""The first stage of `prepare`: read one task's text and write it as word ids, in segments.

    count_task(out, 3)   # task 3 of OUT/.prepare-work/work.json -> its segments and count-000003.json

A segment is about SEGMENT_TOKENS tokens of one task, in three scratch files:

- `NAME.ids`: int32, the stream `<S> w1 .. wn </S> <S> ...` of every kept line, each word as its
  id in the segment's own word list (ids in order of first sight, one dict lookup a token);
- `NAME.lens`: int32, one entry per non-empty line read: its stream length (words + 2), or 0 for
  a line the tokenizer left without words;
- `NAME.words`: the word list, one word a line (words hold no whitespace).

Nothing here knows which lines are held out, since the held-out hash needs each line's number in
the whole corpus, which depends on every task before this one: the merge (prepare_merge) decides
that from the line counts, so tasks can run in any order, on any process or node.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from elmo_dist.data.formats import read_runs
from elmo_dist.data.prepare_work import load_work, save_json
from elmo_dist.data.reader import Stats
from elmo_dist.data.shards import WordIds, run_words
from elmo_dist.data.tokenize import build_run_tokenizer
from elmo_dist.data.vocab import BOS_ID, EOS_ID


def result_path(work_dir: Path, index: int) -> Path:
    return work_dir / f"count-{index:06d}.json"


def count_task(out: str | Path, index: int) -> dict:
    """Read task `index`, write its segments; returns (and saves) {"segments": [{"name", "lines",
    "stream", "words"}], "stats": the reader's Stats as a dict}."""
    work = load_work(out)
    task, opts = work.tasks[index], work.opts()
    tokenize = build_run_tokenizer(opts.tokenizer, opts.lowercase)
    stats, segments, seg = Stats(), [], None
    runs = read_runs(Path(task["path"]), task["format"], stats, opts.text_field, task["start"], task["end"])
    for run in runs:
        if seg is None:
            seg = _Segment(work.dir, f"t{index:06d}-{len(segments):04d}")
        seg.add(run, tokenize)
        if seg.stream >= work.segment_tokens:
            segments.append(seg.close())
            seg = None
    if seg is not None:
        segments.append(seg.close())
    result = {"segments": segments, "stats": asdict(stats)}
    save_json(result_path(work.dir, index), result)
    return result


class _Segment:
    def __init__(self, work_dir: Path, name: str):
        self.dir, self.name = work_dir, name
        self.ids = open(work_dir / f"{name}.ids", "wb")
        self.lens = open(work_dir / f"{name}.lens", "wb")
        self.word_ids = WordIds()
        self.lines = self.stream = 0

    def add(self, run: list[str], tokenize) -> None:
        """One run of non-empty lines: its ids, and one length per line."""
        lines, kept = tokenize(run)
        lens = np.zeros(0, dtype=np.int32)
        if lines:
            ids = self.word_ids.ids(run_words(lines))
            ids.tofile(self.ids)
            lens = line_lengths(ids, lines)
            self.stream += len(ids)
        if kept is not None:  # lines without words keep their place (and their line number): length 0
            full = np.zeros(len(run), dtype=np.int32)
            full[np.flatnonzero(kept)] = lens
            lens = full
        lens.tofile(self.lens)
        self.lines += len(run)

    def close(self) -> dict:
        self.ids.close()
        self.lens.close()
        words = self.word_ids.words
        (self.dir / f"{self.name}.words").write_text("\n".join(words), encoding="utf-8")
        return {"name": self.name, "lines": self.lines, "stream": self.stream, "words": len(words)}


def line_lengths(ids: np.ndarray, lines: list[str]) -> np.ndarray:
    """The stream length of each line of a run from its ids: a line ends where `</S> <S>` stands.
    A word written `</S>` followed by one written `<S>` in the text itself makes one pair too many;
    the words are then counted line by line."""
    if len(lines) == 1:
        return np.array([len(ids)], dtype=np.int32)
    ends = np.flatnonzero((ids[:-1] == EOS_ID) & (ids[1:] == BOS_ID))
    if len(ends) != len(lines) - 1:
        return np.fromiter((len(line.split()) + 2 for line in lines), dtype=np.int32, count=len(lines))
    return np.diff(np.concatenate(([0], ends + 1, [len(ids)]))).astype(np.int32)
