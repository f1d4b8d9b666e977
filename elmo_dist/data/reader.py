"""Reading raw text corpora in bounded memory: plain or gzipped files, one sentence per line.

    stats = Stats()
    for run in read_line_runs(Path("corpus/news.txt.gz"), stats):
        ...  # about 2 MiB of decoded, stripped, non-empty lines

Files are read in 2 MiB blocks and handed on as runs of whole lines, so that the work per line
(decoding, splitting, tokenizing) can be done by one C-level call per run instead of one Python
call per line. Over-long lines, bad UTF-8 and empty lines are counted, never fatal; a binary or
corrupt file is a `DataError` naming it.
"""
from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from elmo_dist.errors import DataError

# one sentence (or document) per line: a line past this is a broken file or not text, and reading it
# whole would make memory grow with the file, so it is skipped (counted) in bounded chunks
MAX_LINE_BYTES = 1 << 20
_BLOCK = 1 << 21


@dataclass
class Stats:
    lines: int = 0
    empty_lines: int = 0
    lines_with_bad_utf8: int = 0
    long_lines: int = 0
    tokens: int = 0
    sentences: int = 0
    oov_tokens: int = 0


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Globs and paths to a sorted, de-duplicated file list; an unmatched one is an error."""
    files: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [pat]
        if not matches:
            raise DataError(f"{pat}: no file matches this pattern")
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise DataError(f"{p}: input file not found")
            if p not in files:
                files.append(p)
    return files


def _open_bytes(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _blocks(f, path: Path, stats: Stats) -> Iterator[bytes]:
    """The file as runs of whole lines (no trailing newline), read 2 MiB at a time; lines over
    MAX_LINE_BYTES are dropped and counted without ever being held whole."""
    carry, skipping, line_no = b"", False, 0
    while block := f.read(_BLOCK):
        if b"\x00" in block:
            at = line_no + (carry + block[: block.index(b"\x00")]).count(b"\n") + 1
            raise DataError(f"{path}:{at}: contains NUL bytes; this looks like a binary file, not text")
        if skipping:  # the rest of an over-long line
            nl = block.find(b"\n")
            if nl < 0:
                continue
            block, skipping = block[nl + 1:], False
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            complete, carry = data[:cut], data[cut + 1:]
            line_no += complete.count(b"\n") + 1
            yield complete
        if len(carry) > MAX_LINE_BYTES:
            stats.lines += 1
            stats.long_lines += 1
            carry, skipping = b"", True
    if carry:
        yield carry


def _decoded(complete: bytes, stats: Stats) -> list[str]:
    try:  # the common case: the whole run decodes at once
        return complete.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in complete.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace"))
                stats.lines_with_bad_utf8 += 1
        return lines


def read_line_runs(path: Path, stats: Stats) -> Iterator[list[str]]:
    """Decoded, stripped, non-empty lines, a run (about 2 MiB) at a time; bad UTF-8 is replaced and
    counted, empty and over-long (> 1 MiB) lines skipped and counted; a binary file is an error."""
    try:
        with _open_bytes(path) as f:
            for complete in _blocks(f, path, stats):
                lines = _decoded(complete, stats)
                if len(complete) > MAX_LINE_BYTES and max(map(len, lines)) > MAX_LINE_BYTES:
                    long = sum(len(line) > MAX_LINE_BYTES for line in lines)  # inside one block: still bounded
                    stats.long_lines += long
                    stats.lines += long
                    lines = [line for line in lines if len(line) <= MAX_LINE_BYTES]
                stats.lines += len(lines)
                kept = [s for s in map(str.strip, lines) if s]
                stats.empty_lines += len(lines) - len(kept)
                if kept:
                    yield kept
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, unreadable file
        raise DataError(f"{path}: cannot read ({e})") from None
