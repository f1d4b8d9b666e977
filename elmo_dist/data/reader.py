"""Reading raw text corpora in bounded memory: plain or gzipped files, one sentence per line.

    stats = Stats()
    for run in read_line_runs(Path("corpus/news.txt.gz"), stats):
        ...  # about 2 MiB of decoded, stripped, non-empty lines

Files are read in 2 MiB blocks and handed on as runs of whole lines, so that the work per line
(decoding, splitting, tokenizing) can be done by one C-level call per run instead of one Python
call per line. Over-long lines, bad UTF-8 and empty lines are counted, never fatal; a binary or
corrupt file is a `DataError` naming it.

`TextLines` is the reader for every other text file (embed input, vocabulary, classifier data):

    text = TextLines("sentences.txt")
    for n, line in enumerate(text, 1):   # n is the line number an editor or `wc -l` shows
        ...
    text.bom                             # True if the file started with a byte-order mark

Both readers end lines at "\\n" only (`str.splitlines()` also splits on form feed, U+0085, U+2028
and more, which shifts every later line number and HDF5 key) and drop a UTF-8 byte-order mark at
the start of a file, counting it, so that it never becomes part of the first word.
"""
from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from elmo_dist.errors import DataError

# one sentence (or document) per line: a line past this is a broken file or not text, and reading it
# whole would make memory grow with the file, so it is skipped (counted) in bounded chunks
MAX_LINE_BYTES = 1 << 20
_BLOCK = 1 << 21
# what Windows editors put at the start of a UTF-8 file; it is not text, and left in it would turn
# the first word into another one ("\ufeffThe")
BOM = b"\xef\xbb\xbf"
# TextLines' limit: the classifier's documents can be long articles, but a line past this is no text
MAX_TEXT_LINE_BYTES = 1 << 26
_TEXT_BLOCK = 1 << 20


@dataclass
class Stats:
    lines: int = 0
    empty_lines: int = 0
    lines_with_bad_utf8: int = 0
    long_lines: int = 0
    tokens: int = 0
    sentences: int = 0
    oov_tokens: int = 0
    boms: int = 0


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
    MAX_LINE_BYTES are dropped and counted without ever being held whole; a leading BOM is dropped
    and counted."""
    carry, skipping, line_no = b"", False, 0
    first = f.read(_BLOCK)
    if first.startswith(BOM):  # once per file, so the per-line work stays C-level calls
        first = first[len(BOM):]
        stats.boms += 1
    for block in chain((first,), iter(lambda: f.read(_BLOCK), b"")):
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


class TextLines:
    """The lines of a UTF-8 text file, without their line ends unless `keep_ends` (csv wants them);
    iterate it once. Only "\\n" ends a line, and one "\\r" before it goes with it, so the n-th line
    yielded is line n of the file whatever other line or page separators (form feed, U+0085,
    U+2028) it holds. A byte-order mark at the start is dropped and `bom` set. Bad UTF-8, a line
    over `max_line_bytes` and an unreadable file are a `DataError` starting `path:line:` or `path:`.

    The file is read in 1 MiB blocks of whole lines, each decoded and split by one C-level call
    (a line at a time in Python is ten times slower on an 800k-word vocabulary); memory stays
    bounded by the line limit even on a binary file."""

    def __init__(self, path: str | Path, keep_ends: bool = False, max_line_bytes: int = MAX_TEXT_LINE_BYTES):
        self.path, self.keep_ends, self.max_line_bytes = Path(path), keep_ends, max_line_bytes
        self.bom = False

    def __iter__(self) -> Iterator[str]:
        try:
            with open(self.path, "rb") as f:
                yield from self._lines(f)
        except FileNotFoundError:
            raise DataError(f"{self.path}: file not found") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e})") from None

    def _lines(self, f) -> Iterator[str]:
        first = f.read(max(_TEXT_BLOCK, len(BOM)))
        if first.startswith(BOM):
            first, self.bom = first[len(BOM):], True
        done, carry = 0, b""  # lines yielded so far; the start of a line whose "\n" is still to come
        for block in chain((first,), iter(lambda: f.read(_TEXT_BLOCK), b"")):
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if len(carry) > self.max_line_bytes:
                raise self._too_long(done + data.count(b"\n", 0, cut) + 1)
            if cut:
                lines = self._decoded(data[:cut], done)
                done += len(lines)
                yield from lines
        if carry:  # the last line, without a "\n"
            yield from self._decoded(carry, done)

    def _decoded(self, raw: bytes, done: int) -> list[str]:
        """Whole lines, each ending in "\\n" but maybe the file's last, as str."""
        if len(raw) > self.max_line_bytes:  # only then can one of them be too long
            long = next((i for i, line in enumerate(raw.split(b"\n")) if len(line) > self.max_line_bytes), None)
            if long is not None:
                raise self._too_long(done + long + 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            n = done + raw.count(b"\n", 0, e.start) + 1
            col = e.start - raw.rfind(b"\n", 0, e.start) + (len(BOM) if n == 1 and self.bom else 0)
            raise DataError(f"{self.path}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {col}); "
                            f"re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
        if not self.keep_ends and "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        last = lines.pop()  # "" after a final "\n", else the file's last line, which has none
        if self.keep_ends:
            lines = [line + "\n" for line in lines]
        if last:
            lines.append(last)
        return lines

    def _too_long(self, n: int) -> DataError:
        return DataError(f"{self.path}:{n}: line longer than {self.max_line_bytes >> 20} MiB; is this a text file?")
