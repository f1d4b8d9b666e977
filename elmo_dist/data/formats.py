"""Corpus inputs in today's formats: text, JSONL and Parquet, all read into the same runs of lines.

    input_format(Path("crawl/part-0001.jsonl.zst"))        # "jsonl" ("text", "parquet")
    for run in read_runs(path, "jsonl", stats, text_field="meta.text"):
        ...  # about 2 MiB of stripped, non-empty lines, as read_line_runs gives for a text file

The format comes from the name: `.jsonl` or `.ndjson` (plain, `.gz` or `.zst`), `.parquet`, and
text otherwise (plain, gzip or zstd, told by the first bytes). A record (a JSONL line, a Parquet
row) is one document: its text (`text_field`, dotted for a nested field: `meta.text`; a key that
itself holds the dots is taken first) is split into lines on "\\n" and each line goes on as a line
of a text file would, so a JSONL or Parquet corpus prepares to the same shards as the text file of
its documents one after another. The text-file rules hold inside the text too: byte-order marks
dropped and counted, lines over 1 MiB of UTF-8 skipped and counted.

A bad record is counted and skipped (`stats.bad_records`, the first one's place and reason in
`stats.first_bad`): a JSONL line that is not JSON, or not an object; a text that is null, not a
string, or holds a NUL character (which no text file may hold either); a JSONL record over
`MAX_RECORD_BYTES`. A record without the field at all, or a Parquet file whose schema lacks it,
means `--text-field` names the wrong field: that is a `DataError` naming `file:record` and the
fields the record has, as is a file that can't be read.
"""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Iterator

from elmo_dist.data.compressed import READ_ERRORS, open_bytes, packing
from elmo_dist.data.reader import MAX_LINE_BYTES, Stats, blocks, decoded, lines_before, read_line_runs
from elmo_dist.errors import DataError

FORMATS = ("text", "jsonl", "parquet")
# a JSONL record is one document: long articles are fine, but past this it is no text
MAX_RECORD_BYTES = 1 << 26
_RUN_CHARS = 1 << 21  # texts gathered into one run before it is split into lines
_PARQUET_ROWS = 256  # rows a Parquet batch: memory stays bounded by the documents' size
_SURROGATE = re.compile("[\ud800-\udfff]")


def input_format(path: Path) -> str:
    """'jsonl', 'parquet' or 'text', from the name (a .gz/.zst/.zstd suffix aside)."""
    name = path.name.lower()
    for packed in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(packed)
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "parquet" if name.endswith(".parquet") else "text"


def read_runs(path: Path, fmt: str, stats: Stats, text_field: str = "text", start: int = 0,
              end: int | None = None) -> Iterator[list[str]]:
    """Runs of stripped, non-empty lines of one input, or of part of it: bytes [start, end) of a
    plain text or JSONL file (whole lines), row groups [start, end) of a Parquet file."""
    if fmt == "text":
        return read_line_runs(path, stats, start, end)
    if fmt == "jsonl":
        return _jsonl_runs(path, stats, text_field, start, end)
    return _parquet_runs(path, stats, text_field, start, end)


def text_run(texts: list[str], stats: Stats) -> list[str]:
    """The stripped, non-empty lines of documents, as read_line_runs gives those of a text file."""
    joined = "\n".join(texts)
    if "\ufeff" in joined:  # escaped in JSON, or in a Parquet string: still not text
        stats.boms += joined.count("\ufeff")
        joined = joined.replace("\ufeff", "")
    lines = joined.split("\n")
    stats.lines += len(lines)
    # a str of n characters is n to 4n bytes of UTF-8: only a line over a quarter of the limit can be long
    if max(map(len, lines)) > MAX_LINE_BYTES // 4:
        short = [s for s in lines if len(s) <= MAX_LINE_BYTES // 4 or len(s.encode("utf-8")) <= MAX_LINE_BYTES]
        stats.long_lines += len(lines) - len(short)
        lines = short
    kept = [s for s in map(str.strip, lines) if s]
    stats.empty_lines += len(lines) - len(kept)
    return kept


class _Records:
    """The texts of one input's records, gathered into runs; bad ones counted with their place."""

    def __init__(self, path: Path, stats: Stats, before=lambda: 0):
        self.path, self.stats, self.before = path, stats, before
        self.texts: list[str] = []
        self.size = 0

    def bad(self, no: int | None, why: str) -> None:
        self.stats.bad_records += 1
        if not self.stats.first_bad:
            where = f"{self.path}:{self.before() + no}" if no is not None else str(self.path)
            self.stats.first_bad = f"{where}: {why}"

    def add(self, no: int, value) -> None:
        """Record `no`'s text (1-based, counted from the part's start), or a reason to skip it."""
        self.stats.records += 1
        if not isinstance(value, str):
            self.bad(no, "its text is null" if value is None else f"its text is a {type(value).__name__}, not a string")
        elif "\x00" in value:
            self.bad(no, "its text holds a NUL character")
        else:
            self.texts.append(value)
            self.size += len(value)

    def runs(self, final: bool = False) -> Iterator[list[str]]:
        if self.texts and (final or self.size >= _RUN_CHARS):
            run = text_run(self.texts, self.stats)
            self.texts, self.size = [], 0
            if run:
                yield run


def _missing(path: Path, no: int, field: str, keys: list[str], depth: int, obj: dict) -> DataError:
    where = "the record" if depth == 0 else f"its '{'.'.join(keys[:depth])}'"
    has = ", ".join(map(str, list(obj)[:12])) + (", ..." if len(obj) > 12 else "") if obj else "none"
    return DataError(f"{path}:{no}: the record has no field '{field}' ({where} has: {has}); "
                     f"name the field of the text with --text-field")


def _value(obj, field: str, keys: list[str]):
    """The value at `field` of a JSON record; (depth, dict) where a key is missing; a str reason
    (wrapped in a tuple) where the record or a level of it is not an object."""
    if not isinstance(obj, dict):
        return ("not a JSON object",)
    if field in obj:  # the field's name as one key, dots and all
        return obj[field]
    value = obj
    for depth, key in enumerate(keys):
        if value is None and depth:
            return None
        if not isinstance(value, dict):
            return (f"'{'.'.join(keys[:depth])}' is a {type(value).__name__}, not an object",)
        if key not in value:
            return depth, value
        value = value[key]
    return value


def _jsonl_runs(path: Path, stats: Stats, field: str, start: int, end: int | None) -> Iterator[list[str]]:
    keys, loads = field.split("."), json.loads
    before = partial(lines_before, path, start) if start else (lambda: 0)
    recs, over = _Records(path, stats, before), Stats()  # over: the records too long to read
    try:
        packed = packing(path)
        with open_bytes(path, start, end) as f:
            for n, complete in blocks(f, path, over, packed, MAX_RECORD_BYTES, start == 0, before):
                for i, line in enumerate(decoded(complete, stats), n + 1):
                    if not line or line.isspace():
                        continue  # a blank line is no record
                    try:
                        value = loads(line)
                    except (ValueError, RecursionError) as e:
                        recs.stats.records += 1
                        recs.bad(i, f"not JSON ({getattr(e, 'msg', e)})")
                        continue
                    value = _value(value, field, keys)
                    if isinstance(value, tuple):
                        if len(value) == 1:
                            recs.stats.records += 1
                            recs.bad(i, value[0])
                            continue
                        raise _missing(path, before() + i, field, keys, *value)
                    if isinstance(value, str) and ("\\ud" in line or "\\uD" in line):
                        value = _no_lone_surrogates(value, stats)
                    recs.add(i, value)
                yield from recs.runs()
                if over.long_lines:  # counted by `blocks`, where the record's number is not known
                    recs.stats.records += over.long_lines
                    for _ in range(over.long_lines):
                        recs.bad(None, f"a record over {MAX_RECORD_BYTES >> 20} MiB")
                    over.long_lines = 0
        yield from recs.runs(final=True)
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _no_lone_surrogates(text: str, stats: Stats) -> str:
    """JSON can escape half of a UTF-16 pair ("\\ud800") alone, which is no character and can't be
    written as UTF-8: replaced, and counted as bad UTF-8 is in a text file."""
    fixed = _SURROGATE.sub("\ufffd", text)  # U+FFFD, as bad bytes in a text file become
    stats.lines_with_bad_utf8 += fixed != text
    return fixed


def parquet_field(pf, path: Path, field: str) -> str:
    """The column path to read for `field` from a pyarrow ParquetFile; a DataError if its schema
    has no such field or it is not text."""
    import pyarrow as pa

    schema = pf.schema_arrow
    if field in schema.names:
        typ = schema.field(field).type
    else:
        typ, keys = None, field.split(".")
        fields = {f.name: f for f in schema}
        for depth, key in enumerate(keys):
            if key not in fields:
                where = "its schema" if depth == 0 else f"its struct '{'.'.join(keys[:depth])}'"
                raise DataError(f"{path}: no field '{field}' ({where} has: {', '.join(fields) or 'none'}); "
                                f"name the field of the text with --text-field")
            typ = fields[key].type
            if depth + 1 < len(keys):
                if not pa.types.is_struct(typ):
                    raise DataError(f"{path}: '{'.'.join(keys[:depth + 1])}' is {typ}, not a struct, so it "
                                    f"has no field '{keys[depth + 1]}' (--text-field {field})")
                fields = {typ.field(j).name: typ.field(j) for j in range(typ.num_fields)}
    value = typ.value_type if pa.types.is_dictionary(typ) else typ
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)):
        raise DataError(f"{path}: the field '{field}' is {typ}, not text (--text-field names the text)")
    return field


def _parquet_runs(path: Path, stats: Stats, field: str, start: int, end: int | None) -> Iterator[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        column = parquet_field(pf, path, field)
        end = pf.num_row_groups if end is None else end
        row = sum(pf.metadata.row_group(g).num_rows for g in range(start))
        recs = _Records(path, stats)
        nested = field not in pf.schema_arrow.names
        for batch in pf.iter_batches(batch_size=_PARQUET_ROWS, row_groups=range(start, end), columns=[column]):
            values = batch.column(0)
            for _ in field.split(".")[1:] if nested else ():
                values = values.flatten()[0]  # the one field read; a null struct gives null, as it should
            for value in values.to_pylist():
                row += 1
                recs.add(row, value)
            yield from recs.runs()
        yield from recs.runs(final=True)
    except (*READ_ERRORS, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read as Parquet ({e})") from None
