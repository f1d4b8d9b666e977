"""Opening corpus files as byte streams: plain, gzip or zstd (told by their first bytes, not their
names), whole or as a byte range of a plain file.

    with open_bytes(Path("news.jsonl.zst")) as f:     # decompressed bytes, read(n) as from a file
        block = f.read(1 << 21)
    packing(Path("news.txt.gz"))                      # "gzip" ("zstd", or None for a plain file)
    with open_bytes(Path("news.txt"), 1 << 24, 1 << 25) as f: ...   # bytes [16 MiB, 32 MiB) only

A compressed stream can only be read from its start, so only plain files are read in ranges
(`prepare --workers` cuts big plain files into ranges of whole lines). zstd frames written one
after another (`cat a.zst b.zst`, or `zstd -T0`'s multi-frame output) are read as one stream, as
gzip members are, and a file cut short is an error, as it is for gzip. `READ_ERRORS` are what a
truncated or corrupt file raises while being read.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from elmo_dist.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_errors() -> tuple:
    try:
        import zstandard
    except ImportError:  # a zstd file is then refused by open_bytes, with the fix
        return ()
    return (zstandard.ZstdError,)


READ_ERRORS = (OSError, EOFError, zlib.error, *_zstd_errors())


def packing(path: Path) -> str | None:
    """'gzip' or 'zstd' if the file starts with that format's magic number, else None."""
    with open(path, "rb") as f:
        head = f.read(len(ZSTD_MAGIC))
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "zstd" if head == ZSTD_MAGIC else None


class _Reader:
    """What both readers below share: the open file `_f`, closed by close() or a with block."""

    _f = None

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Range(_Reader):
    """Bytes [start, end) of a plain file, read like a file."""

    def __init__(self, path: Path, start: int, end: int | None):
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = None if end is None else end - start

    def read(self, n: int = -1) -> bytes:
        if self._left is None:
            return self._f.read(n)
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


class _Zstd(_Reader):
    """The frames of a zstd file one after another, read like a file. zstandard's own readers
    stop at the first frame or, at a file cut short, just end; this one raises ZstdError there,
    as gzip does for a truncated file. The input goes in 64 KiB at a time, which bounds what one
    step decompresses to 64 KiB times the compression ratio."""

    def __init__(self, path: Path):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: is zstd-compressed, and reading it needs the `zstandard` package: "
                            "`pip install zstandard`") from None
        self._zstd = zstandard
        self._f = open(path, "rb")
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._out = bytearray()
        self._left = b""  # input read but not yet decompressed (what follows a frame's end)

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._out) < n) and self._step():
            pass
        n = len(self._out) if n < 0 else min(n, len(self._out))
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _step(self) -> bool:
        data, self._left = self._left or self._f.read(1 << 16), b""
        if not data:
            if self._frame is not None:
                raise self._zstd.ZstdError("the file ends inside a zstd frame: it was cut short")
            return False
        if self._frame is None:
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
        self._out += self._frame.decompress(data)
        if self._frame.eof:
            self._left, self._frame = self._frame.unused_data, None
        return True


def open_bytes(path: Path, start: int = 0, end: int | None = None):
    """The decompressed bytes of `path`, or bytes [start, end) of a plain file. A range of a
    compressed file is a ValueError: the caller only cuts plain files."""
    kind = packing(path)
    if kind is not None and (start or end is not None):
        raise ValueError(f"{path}: a {kind} file can only be read whole")
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return _Zstd(path)
    return _Range(path, start, end)


def decompress_command(path: Path, kind: str | None) -> tuple[str, Path]:
    """The shell command that writes `path`'s decompressed bytes to stdout ('' for a plain file),
    and the file's name without the compression suffix."""
    suffix = {"gzip": ".gz", "zstd": ".zst"}.get(kind or "", "")
    base = Path(path.name[: -len(suffix)]) if suffix and path.name.endswith(suffix) else Path(path.name)
    return ({"gzip": "gzip -dc", "zstd": "zstd -dc"}.get(kind or "", ""), base)
