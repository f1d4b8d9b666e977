"""Fuzzing with hypothesis: the corpus reader, the char-id encoder and the classification-file reader
take any bytes without crashing (a DataError naming the file is the only allowed failure) and
without memory growing with the input."""
from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elmo_dist.classify.documents import read_examples
from elmo_dist.data.char_ids import BOW_CHAR, EOW_CHAR, N_CHARS, PAD_CHAR, token_char_ids
from elmo_dist.data.reader import _BLOCK, MAX_LINE_BYTES, Stats, read_line_runs
from elmo_dist.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# text-like bytes: words, whitespace, newlines, NULs, invalid UTF-8, quotes and delimiters
chunks = st.one_of(st.binary(max_size=40), st.sampled_from([b"\n", b"\r\n", b" ", b"\t", b"\x00", b"\xff\xfe",
                                                           b'"', b",", b"the cat", "caf\u00e9".encode()]),
                   st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")))
blobs = st.lists(chunks, max_size=60).map(b"".join)


def _write(tmp: Path, name: str, data: bytes, gz: bool = False) -> Path:
    path = tmp / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@FUZZ
@given(data=blobs, gz=st.booleans(), cut=st.integers(min_value=0, max_value=64))
def test_corpus_reader_takes_any_bytes(tmp_path, data, gz, cut):
    path = _write(tmp_path, "c.txt", data, gz)
    if gz and cut:  # a truncated gzip too
        path.write_bytes(path.read_bytes()[:-cut])
    stats = Stats()
    try:
        lines = [line for run in read_line_runs(path, stats) for line in run]
    except DataError as e:
        assert str(path) in str(e)
        return
    assert all(line and line == line.strip() for line in lines)
    assert stats.lines >= len(lines) + stats.empty_lines - 0


@FUZZ
@given(token=st.text(max_size=80), max_chars=st.integers(min_value=3, max_value=60))
def test_char_ids_are_always_well_formed(token, max_chars):
    ids = token_char_ids(token, max_chars)
    assert ids.shape == (max_chars,) and ids.dtype == np.int16
    assert ids[0] == BOW_CHAR and ((ids >= 0) & (ids < N_CHARS)).all()
    end = int(np.flatnonzero(ids == EOW_CHAR)[0])
    assert (ids[end + 1:] == PAD_CHAR).all() and end <= max_chars - 1


@FUZZ
@given(data=blobs, fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_classification_reader_takes_any_bytes(tmp_path, data, fmt):
    header = b"text\tlabel\n" if fmt == "tsv" else (b"text,label\n" if fmt == "csv" else b"")
    path = _write(tmp_path, f"t.{fmt}", header + data)
    try:
        examples = read_examples(path, fmt)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert all(ex.text.strip() and ex.label for ex in examples)


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_on_one_enormous_line(tmp_path):
    """A 64 MiB line costs the corpus reader a few blocks of memory (it is skipped in bounded chunks), and the CSV
    reader refuses it at its limit instead of reading it whole."""
    big = _write(tmp_path, "big.txt", b"the cat .\n" + b"x" * (64 << 20) + b"\nthe dog .\n")
    stats = Stats()
    peak = _peak_mib(lambda: [len(run) for run in read_line_runs(big, stats)])
    # bounded by the reader's blocks (and the 1 MiB line limit), not by the 64 MiB line
    assert stats.long_lines == 1 and peak < 4 * (_BLOCK + MAX_LINE_BYTES) / 2**20
    csv_path = _write(tmp_path, "big.csv", b"text,label\n" + b"x" * (80 << 20) + b",a\n")
    csv_peak = []

    def read_csv():
        try:
            read_examples(csv_path, "csv")
        except DataError as e:
            csv_peak.append(str(e))

    peak_csv = _peak_mib(read_csv)
    assert csv_peak and "big.csv:2: line longer than 64 MiB" in csv_peak[0]
    assert peak_csv < 200  # at most the limit plus its decoding, never the whole file twice over
    print(f"\ncorpus reader: 64 MiB line -> peak {peak:.1f} MiB traced; CSV reader: 80 MiB line -> {peak_csv:.0f} MiB")

