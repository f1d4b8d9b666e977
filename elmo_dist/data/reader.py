"""Reading raw text corpora in bounded memory: plain, gzip or zstd files, one sentence per line.

    stats = Stats()
    for run in read_line_runs(Path("corpus/news.txt.gz"), stats):
        ...  # about 2 MiB of decoded, stripped, non-empty lines

Files are read in 2 MiB blocks and handed on as runs of whole lines, so that the work per line
(decoding, splitting, tokenizing) can be done by one C-level call per run instead of one Python
call per line. Over-long lines, bad UTF-8 and empty lines are counted, never fatal; a binary or
corrupt file is a `DataError` naming it. `read_line_runs(path, stats, start, end)` reads the whole
lines of bytes [start, end) of a plain file (`prepare --workers` reads big files in such ranges).
Records (JSONL, Parquet) are read by elmo_dist.data.formats into the same runs.

`TextLines` is the reader for every other text file (embed input, vocabulary, classifier data):

    text = TextLines("sentences.txt")
    for n, line in enumerate(text, 1):   # n is the line number an editor or `wc -l` shows
        ...
    text.boms                            # how many byte-order marks were dropped (text.bom: any)

Both readers end lines at "\\n" only (`str.splitlines()` also splits on form feed, U+0085, U+2028
and more, which shifts every later line number and HDF5 key). U+FEFF (the byte-order mark) is never
text: wherever it is, it is dropped and counted, so that it never becomes part of a word. It is not
only at the start of a file: `cat a.txt b.txt` or `cat a.gz b.gz` puts one at the start of each
part ("\\ufeffWorld" was a word of its own in the vocabulary). NUL bytes are an error naming the
line (a binary file, or UTF-16 without a byte-order mark), and so is a file that starts with a
UTF-16 or UTF-32 byte-order mark: the message gives the `iconv` command that converts it. Such a
file is refused rather than decoded, so that every reader, line number and byte offset in elmo-dist
is about UTF-8 bytes; converting it once is cheap.
"""
from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator

from elmo_dist.data.compressed import READ_ERRORS, decompress_command, open_bytes, packing
from elmo_dist.errors import DataError

# one sentence (or document) per line: a line past this many UTF-8 bytes is a broken file or not
# text, and reading it whole would make memory grow with the file, so it is skipped (counted) in
# bounded chunks. Bytes, not characters, wherever the line is: the same 600k-character CJK line
# (1.8 MB) used to be kept at the start of a file (counted in characters) and skipped further on.
MAX_LINE_BYTES = 1 << 20
_BLOCK = 1 << 21
# what Windows editors put at the start of a UTF-8 file, and `cat` in the middle of one; it is not
# text, and left in it would turn a word into another one ("\ufeffThe")
BOM = b"\xef\xbb\xbf"
_BOM_CHAR = "\ufeff"
# the byte-order marks of the encodings elmo-dist does not read (what Windows PowerShell's `>`
# writes is UTF-16 LE). UTF-32 LE's (FF FE 00 00) starts with UTF-16 LE's (FF FE): it goes first.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 LE", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32 BE", "UTF-32"),
              (b"\xff\xfe", "UTF-16 LE", "UTF-16"), (b"\xfe\xff", "UTF-16 BE", "UTF-16"))
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
    records: int = 0  # JSONL and Parquet inputs: their records, and those skipped (not JSON, no text)
    bad_records: int = 0
    first_bad: str = ""  # where the first skipped record is, and why

    def add(self, other: "Stats") -> None:
        """Add another part's counts to these (the first bad record stays the earliest one's)."""
        for name, value in vars(other).items():
            if name != "first_bad":
                setattr(self, name, getattr(self, name) + value)
        self.first_bad = self.first_bad or other.first_bad


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


def convert_command(path: Path, encoding: str, packed: str | None = None) -> str:
    """The shell command that writes a UTF-8 copy of `path` (compressed with `packed`, 'gzip' or
    'zstd', or plain) beside it (corpus.utf8.txt: the suffix, which classification data is read
    by, stays last)."""
    unpack, base = decompress_command(path, packed)
    out, src = shlex.quote(str(path.with_name(f"{base.stem}.utf8{base.suffix}"))), shlex.quote(str(path))
    return f"{unpack} {src} | iconv -f {encoding} -t UTF-8 > {out}" if unpack else \
        f"iconv -f {encoding} -t UTF-8 {src} > {out}"


def refuse_wide_encoding(path: Path, head: bytes, packed: str | None = None) -> None:
    """A `DataError` with the command that converts the file if `head` (its first bytes) starts with
    a UTF-16 or UTF-32 byte-order mark. iconv's "UTF-16"/"UTF-32" read the mark for the byte order."""
    for mark, name, family in _WIDE_BOMS:
        if head.startswith(mark):
            raise DataError(f"{path}: the file is {name} text (it starts with the byte-order mark "
                            f"{mark.hex(' ').upper()}), not UTF-8; convert it first: "
                            f"`{convert_command(path, family, packed)}`")


def nul_error(path: Path, line: int, block: bytes, packed: str | None = None) -> DataError:
    """The error for NUL bytes on `line`. Text in UTF-16 without a byte-order mark is full of them,
    one in every other byte (ASCII's high bytes), which `block` (a read block) shows."""
    sample = block[:4096]
    even, odd, half = sample[0::2].count(0), sample[1::2].count(0), len(sample) / 2
    if len(sample) >= 64 and max(even, odd) > 0.8 * half and min(even, odd) < 0.1 * half:
        order = "LE" if odd > even else "BE"
        return DataError(f"{path}:{line}: contains NUL bytes in every other byte: this looks like UTF-16 "
                         f"{order} text without a byte-order mark, not UTF-8; convert it first: "
                         f"`{convert_command(path, 'UTF-16' + order, packed)}`")
    return DataError(f"{path}:{line}: contains NUL bytes; this looks like a binary file, not text")


def _short_pieces(run: bytes, line_no: int, limit: int, stats: Stats) -> Iterator[tuple[int, bytes]]:
    """(n, piece): `run` (whole lines, "\\n" between them, the first being line n + 1) without those
    over `limit` bytes, which are counted. Whether there is one takes a few C-level searches per run,
    not one per line: from a line's start, the last "\\n" within limit + 1 bytes ends a stretch of
    short lines, and the next line starts after it; finding none there means a long line."""
    start = 0
    while len(run) - start > limit:
        nl = run.rfind(b"\n", start, start + limit + 1)
        if nl < 0:
            break
        start = nl + 1
    else:
        yield line_no, run
        return
    piece, first = [], line_no  # rare: a line over the limit ended inside this run
    for i, line in enumerate(run.split(b"\n")):
        if len(line) <= limit:
            first = first if piece else line_no + i
            piece.append(line)
            continue
        stats.lines += 1
        stats.long_lines += 1
        if piece:
            yield first, b"\n".join(piece)
            piece = []
    if piece:
        yield first, b"\n".join(piece)


def lines_before(path: Path, offset: int) -> int:
    """How many lines of a plain file end before byte `offset` (for an error's line number)."""
    n = 0
    with open(path, "rb") as f:
        while offset > 0 and (block := f.read(min(offset, _BLOCK))):
            n, offset = n + block.count(b"\n"), offset - len(block)
    return n


def blocks(f, path: Path, stats: Stats, packed: str | None = None, limit: int = MAX_LINE_BYTES,
           head: bool = True, before: Callable[[], int] = lambda: 0) -> Iterator[tuple[int, bytes]]:
    """(n, run): the stream `f` as runs of whole lines (no trailing newline), read 2 MiB at a time,
    n being the number of the stream's lines before the run's first. Lines over `limit` bytes are
    dropped and counted without ever being held whole. `head`: `f` starts at the file's start (where
    a UTF-16/32 byte-order mark is refused); `before()`: the file's lines before the stream, asked
    only for an error's line number."""
    carry, skipping, line_no = b"", False, 0  # line_no: the lines read whole or skipped so far
    first = f.read(_BLOCK)
    if head:
        refuse_wide_encoding(path, first, packed)
    for block in chain((first,), iter(lambda: f.read(_BLOCK), b"")):
        if b"\x00" in block:
            at = line_no + (carry + block[: block.index(b"\x00")]).count(b"\n") + 1
            raise nul_error(path, before() + at, block, packed)
        if skipping:  # the rest of an over-long line
            nl = block.find(b"\n")
            if nl < 0:
                continue
            block, skipping = block[nl + 1:], False
            line_no += 1  # the skipped line, which later line numbers count too
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            complete, carry = data[:cut], data[cut + 1:]
            yield from _short_pieces(complete, line_no, limit, stats)
            line_no += complete.count(b"\n") + 1
        if len(carry) > limit:
            stats.lines += 1
            stats.long_lines += 1
            carry, skipping = b"", True
    if carry:
        yield line_no, carry  # at most `limit` bytes, checked above


def decoded(complete: bytes, stats: Stats) -> list[str]:
    """The lines of a run as str; bad UTF-8 replaced and counted, U+FEFF dropped and counted."""
    try:  # the common case: the whole run decodes at once
        text = complete.decode("utf-8")
    except UnicodeDecodeError:
        lines = []
        for raw in complete.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace"))
                stats.lines_with_bad_utf8 += 1
        text = "\n".join(lines)
    if _BOM_CHAR in text:  # one C-level search per run (none at all in a str of Latin-1 characters)
        stats.boms += text.count(_BOM_CHAR)
        text = text.replace(_BOM_CHAR, "")
    return text.split("\n")


def read_line_runs(path: Path, stats: Stats, start: int = 0, end: int | None = None) -> Iterator[list[str]]:
    """Decoded, stripped, non-empty lines, a run (about 2 MiB) at a time; bad UTF-8 is replaced and
    counted, empty and over-long (> 1 MiB of UTF-8) lines skipped and counted, byte-order marks
    dropped and counted; a binary, UTF-16 or UTF-32 file is an error. With `start`/`end`: the lines
    of bytes [start, end) of a plain file, which must begin and end on line boundaries."""
    try:
        packed = packing(path)
        with open_bytes(path, start, end) as f:
            before = partial(lines_before, path, start)
            for _, complete in blocks(f, path, stats, packed, head=start == 0, before=before):
                lines = decoded(complete, stats)
                stats.lines += len(lines)
                kept = [s for s in map(str.strip, lines) if s]
                stats.empty_lines += len(lines) - len(kept)
                if kept:
                    yield kept
    except READ_ERRORS as e:  # truncated or corrupt gzip or zstd, unreadable file
        raise DataError(f"{path}: cannot read ({e})") from None


class TextLines:
    """The lines of a UTF-8 text file (plain, gzip or zstd), without their line ends unless
    `keep_ends` (csv wants them); iterate it once. Only "\\n" ends a line, and one "\\r" before it
    goes with it, so the n-th line yielded is line n of the file whatever other line or page
    separators (form feed, U+0085, U+2028) it holds. Every U+FEFF (byte-order mark) is dropped and
    counted in `boms`. Bad UTF-8, NUL bytes, a line over `max_line_bytes`, a UTF-16/32 file and an
    unreadable file are a `DataError` starting `path:line:` or `path:`.

    The file is read in 1 MiB blocks of whole lines, each decoded and split by one C-level call
    (a line at a time in Python is ten times slower on an 800k-word vocabulary); memory stays
    bounded by the line limit even on a binary file."""

    def __init__(self, path: str | Path, keep_ends: bool = False, max_line_bytes: int = MAX_TEXT_LINE_BYTES):
        self.path, self.keep_ends, self.max_line_bytes = Path(path), keep_ends, max_line_bytes
        self.boms, self._start_bom = 0, False

    @property
    def bom(self) -> bool:
        """Whether a byte-order mark was dropped."""
        return self.boms > 0

    def __iter__(self) -> Iterator[str]:
        try:
            with open_bytes(self.path) as f:  # gzip and zstd files decompressed (told by their first bytes)
                yield from self._lines(f)
        except FileNotFoundError:
            raise DataError(f"{self.path}: file not found") from None
        except READ_ERRORS as e:  # unreadable, or a truncated or corrupt gzip/zstd file
            raise DataError(f"{self.path}: cannot read ({e})") from None

    def _lines(self, f) -> Iterator[str]:
        first = f.read(max(_TEXT_BLOCK, len(BOM)))
        refuse_wide_encoding(self.path, first)
        self._start_bom = first.startswith(BOM)  # dropped as bytes, so that columns in errors stay right
        if self._start_bom:
            first, self.boms = first[len(BOM):], 1
        done, carry = 0, b""  # lines yielded so far; the start of a line whose "\n" is still to come
        for block in chain((first,), iter(lambda: f.read(_TEXT_BLOCK), b"")):
            if b"\x00" in block:
                raise nul_error(self.path, done + (carry + block[: block.index(b"\x00")]).count(b"\n") + 1, block)
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if len(carry) > self.max_line_bytes:
                raise self._too_long(done + data.count(b"\n", 0, cut) + 1)
            if cut:
                lines = self._decoded(data[:cut], done, f)
                done += len(lines)
                yield from lines
        if carry:  # the last line, without a "\n"
            yield from self._decoded(carry, done, f)

    def _decoded(self, raw: bytes, done: int, f) -> list[str]:
        """Whole lines, each ending in "\\n" but maybe the file's last, as str."""
        if len(raw) > self.max_line_bytes:  # only then can one of them be too long
            long = next((i for i, line in enumerate(raw.split(b"\n")) if len(line) > self.max_line_bytes), None)
            if long is not None:
                raise self._too_long(done + long + 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._not_utf8(raw, e.start, done, f) from None
        if _BOM_CHAR in text:
            self.boms += text.count(_BOM_CHAR)
            text = text.replace(_BOM_CHAR, "")
        if not self.keep_ends and "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        last = lines.pop()  # "" after a final "\n", else the file's last line, which has none
        if self.keep_ends:
            lines = [line + "\n" for line in lines]
        if last:
            lines.append(last)
        return lines

    def _not_utf8(self, raw: bytes, at: int, done: int, f) -> DataError:
        """The error for bad UTF-8 at byte `at` of `raw`. Converting from Latin-1 is advised only
        where it gives the right text: never for UTF-16/32 or binary data (NUL bytes, read on from
        `f`: NUL bytes decode as Latin-1 too, and "converting" gave words like 't\\x00h\\x00e\\x00')."""
        n = done + raw.count(b"\n", 0, at) + 1
        col = at - raw.rfind(b"\n", 0, at) + (len(BOM) if n == 1 and self._start_bom else 0)
        msg = f"{self.path}:{n}: not valid UTF-8 (byte 0x{raw[at]:02x} at byte {col})"
        wide = next((name for mark, name, _ in _WIDE_BOMS if raw.startswith(mark, at)), None)
        if wide:
            return DataError(f"{msg}; a {wide} byte-order mark starts there (was a {wide} file appended?): "
                             f"convert that part with `iconv -f {wide.split()[0]} -t UTF-8`")
        # the blocks read so far had no NUL byte; the rest of the file is read only on this error path
        if any(b"\x00" in block for block in iter(lambda: f.read(_TEXT_BLOCK), b"")):
            return DataError(f"{msg}, and the file holds NUL bytes: it is binary, or UTF-16/32 text, not text "
                             f"in a one-byte encoding")
        return DataError(f"{msg}; if the file is Latin-1 (ISO-8859-1), re-encode it as UTF-8: "
                         f"`{convert_command(self.path, 'latin1')}`")

    def _too_long(self, n: int) -> DataError:
        return DataError(f"{self.path}:{n}: line longer than {self.max_line_bytes >> 20} MiB; is this a text file?")
