"""Where commands write: every output path checked before the work, and disk faults as one line.

    refuse_overwrite([out_file], [text_file, *run_files], "embed")  # never write over what a command reads
    out_dir = writable_dir(path, "--out")                          # created if missing; refused if read-only
    need_space(out_dir, 3 << 20, "the checkpoint")                 # refused before writing what can't fit
    with atomic_hdf5(path, needed) as f: ...                       # complete under its name, or absent

A command that fails half-way through writing must leave no output that looks complete and no
temporary files, and say what went wrong in one line: a full disk names the path, how much the
write needed and how much was free. Several writers do not say why a write stopped short (torch's
zip writer: "unexpected pos"; numpy's `tofile`: "80255 requested and 51200 written"), so a failed
write on a disk with less room left than the write needed counts as a full disk too.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from elmo_dist.errors import DiskFull, OutputError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
# what HDF5 writes beyond the arrays themselves: an object header and a B-tree entry per dataset
HDF5_BYTES_PER_DATASET = 4096


def human(n: float) -> str:
    """Bytes for a person: '812 KiB', '3.4 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (where a new file would land)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(_existing(Path(path))).free


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file, however spelled: relative or absolute, `..`, symlinks,
    hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(outputs: Iterable[str | Path], inputs: Iterable[str | Path], command: str) -> None:
    """OutputError if a path the command would write is one it reads (or a directory it reads
    from): the user's text, vocabulary or checkpoint would be gone."""
    inputs = [Path(p) for p in inputs if p]
    for out in outputs:
        for src in inputs:
            if same_file(out, src):
                raise OutputError(f"{out}: is also an input of `elmo-dist {command}` ({src}); writing there would "
                                  "destroy it. Choose another output path")


def inside(path: str | Path, directory: str | Path) -> bool:
    """Whether `path` is `directory` or lies under it (symlinks resolved)."""
    p, d = os.path.realpath(path), os.path.realpath(directory)
    return p == d or p.startswith(d.rstrip(os.sep) + os.sep)


def writable_dir(path: str | Path, what: str) -> Path:
    """`path` as a directory this process can write to, created (with its parents) if missing.
    OutputError naming `what` (the option or key that chose it) if it is a file, on a read-only
    file system or not ours to write; checked by writing a probe file, since `os.access` says
    yes to root on a directory that a read-only bind mount protects only from writes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} must be a directory, and this is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise unwritable(path, what, e) from None
    return path


def unwritable(path: Path, what: str, e: OSError) -> OutputError | DiskFull:
    if e.errno in _FULL:
        return DiskFull(f"{path}: the disk is full ({human(free_bytes(path))} free); {what} cannot be written")
    return OutputError(f"{path}: cannot write here ({e.strerror or e}); choose another {what}")


def check_new_file(path: str | Path, what: str) -> Path:
    """A file about to be written: its folder must exist and be writable, and the path must not
    be a directory. Checked before the work, so that hours of computing never end in a traceback."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: {what} is a directory; give a file name, e.g. {path / 'out.hdf5'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: {what}'s folder {parent} does not exist; create it first")
    writable_dir(parent, f"{what}'s folder")
    return path


def need_space(path: str | Path, needed: int, what: str) -> None:
    """DiskFull before writing `needed` bytes under `path` if the file system has less free."""
    free = free_bytes(path)
    if needed > free:
        raise DiskFull(f"{path}: not enough disk space for {what}: it needs about {human(needed)}, "
                       f"{human(free)} free")


def looks_full(exc: BaseException, path: str | Path, needed: int = 0) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT, a message saying so, or
    (writers that don't say why) less room left than the write needed."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)
    if "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text:
        return True
    try:
        return free_bytes(path) < max(needed, 1 << 20)
    except OSError:
        return False


def disk_full(path: str | Path, what: str, needed: int = 0) -> DiskFull:
    need = f"it needs about {human(needed)}, " if needed else ""
    return DiskFull(f"{path}: the disk is full while writing {what} ({need}{human(free_bytes(path))} free)")


def remove(*paths: str | Path) -> None:
    """Remove files or directory trees if they exist (temporary output after a failure)."""
    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


class _SpaceGuard(io.RawIOBase):
    """The file HDF5 writes through (h5py's file-object driver). After a write fails for want of
    space it swallows every later write and records the error: once libhdf5 has seen a failed write
    its state is broken, and closing it crashed the interpreter (a segmentation fault, hundreds of
    tracebacks), so it must never see one."""

    def __init__(self, path: Path):
        super().__init__()
        self.f = open(path, "w+b")
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b) -> int:
        return self.f.readinto(b)

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        if self.error is None:
            try:
                return self.f.write(b)
            except OSError as e:
                self.error = e
        self.f.seek(n, os.SEEK_CUR)
        return n

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.f.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return self.f.tell() if size is None else size

    def flush(self) -> None:
        if not self.f.closed:
            try:
                self.f.flush()
            except OSError as e:
                self.error = self.error or e

    def close(self) -> None:
        if not self.f.closed:
            self.flush()
            try:
                self.f.close()
            except OSError as e:
                self.error = self.error or e
        super().close()


class AtomicHdf5:
    """An h5py.File being written under `PATH.tmp`; `failed` turns true once a write has failed for
    want of space (the caller may stop early: nothing more will land)."""

    def __init__(self, file, guard: _SpaceGuard):
        self.file, self.guard = file, guard

    @property
    def failed(self) -> bool:
        return self.guard.error is not None


@contextmanager
def atomic_hdf5(path: str | Path, needed: int, what: str) -> Iterator[AtomicHdf5]:
    """Write an HDF5 file under a temporary name and rename it to `path` when complete. On any
    failure the temporary file is removed; a full disk (checked first against `needed` bytes, and
    caught while writing) is one DiskFull line."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    need_space(path.parent, needed, what)
    guard = _SpaceGuard(tmp)
    try:
        with h5py.File(guard, "w") as f:
            yield AtomicHdf5(f, guard)
        guard.close()
        if guard.error is not None:
            raise disk_full(path, what, needed) if looks_full(guard.error, path, needed) else guard.error
        tmp.replace(path)
    except BaseException:
        guard.close()
        tmp.unlink(missing_ok=True)
        raise
