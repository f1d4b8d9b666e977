"""Corpora in JSONL (plain, gzip, zstd) and Parquet: one document per record, prepared to exactly the
shards of the text file of the same documents; bad records counted, a missing field one error line
naming file:record."""
from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from elmo_dist.data import prepare_work
from elmo_dist.data.prepare import PrepareOptions, prepare
from elmo_dist.errors import DataError

from conftest import one_error_line, run_cli

pytestmark = pytest.mark.slow(seconds=12)  # its serial seconds: conftest starts the slowest first


def _documents(n: int, seed: int) -> list[str]:
    """Documents of several lines, with what the text reader takes care of: blank and padded lines,
    CRLF, byte-order marks inside, non-ASCII words, and one line over 1 MiB."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)] + ["caf\u00e9", "\u65e5\u672c", "na\u00efve"]
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(words[: rng.choice([15, len(words)])]) for _ in range(rng.randint(1, 14)))
                 for _ in range(rng.randint(1, 4))]
        if i % 9 == 0:
            lines.insert(1, "   ")
        if i % 11 == 0:
            lines[0] = "\ufeff" + lines[0] + " \r"
        docs.append("\n".join(lines))
    docs[7] += "\n" + "x" * (1 << 20) + " long"  # skipped as a text file's line over 1 MiB is
    return docs


def _write(path: Path, docs: list[str], field: str) -> Path:
    """The documents as JSONL (plain, .gz, .zst) or Parquet, the text at `field` (dotted: nested)."""
    def record(i, doc):
        rec = {"id": i, "source": "test"}
        if "." in field and not field.startswith("lit"):
            outer, inner = field.split(".")
            rec[outer] = {inner: doc, "lang": "en"}
        else:
            rec[field] = doc
        return rec

    records = [record(i, d) for i, d in enumerate(docs)]
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=40)
        return path
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def _files(out: Path) -> dict[str, str]:
    """Every output file but the manifest, by its checksum."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


OPTIONS = dict(heldout_fraction=0.2, shard_tokens=400, min_count=2)


@pytest.mark.parametrize("name,field", [("c.jsonl", "text"), ("c.jsonl.gz", "meta.text"), ("c.jsonl.zst", "meta.text"),
                                        ("c.ndjson", "lit.eral"), ("c.parquet", "meta.text"), ("c.parquet", "body")])
def test_records_prepare_to_the_shards_of_the_text_file(tmp_path, name, field):
    docs = _documents(150, 0)
    text = tmp_path / "c.txt"
    text.write_text("\n".join(docs) + "\n", encoding="utf-8")
    want = prepare(PrepareOptions(inputs=[str(text)], out=str(tmp_path / "from-text"), **OPTIONS))
    src = _write(tmp_path / name, docs, field)
    got = prepare(PrepareOptions(inputs=[str(src)], out=str(tmp_path / "out"), text_field=field, **OPTIONS))
    assert _files(tmp_path / "out") == _files(tmp_path / "from-text")
    assert got["splits"] == want["splits"] and len(got["splits"]["train"]["shards"]) > 3
    assert got["records"] == 150 and got["bad_records_skipped"] == 0
    for key in ("lines", "long_lines_skipped", "byte_order_marks_dropped", "empty_lines_skipped"):
        assert got[key] == want[key], key
    assert got["long_lines_skipped"] == 1 and got["byte_order_marks_dropped"] == 14


def test_a_zstd_text_file_reads_as_the_text(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("\n".join(_documents(60, 1)) + "\n", encoding="utf-8")
    packed = tmp_path / "c.txt.zst"
    # two frames, as `cat a.zst b.zst` writes: read as one stream
    raw = text.read_bytes()
    cut = raw.index(b"\n", len(raw) // 2) + 1
    packed.write_bytes(b"".join(zstandard.ZstdCompressor().compress(part) for part in (raw[:cut], raw[cut:])))
    prepare(PrepareOptions(inputs=[str(text)], out=str(tmp_path / "a"), **OPTIONS))
    prepare(PrepareOptions(inputs=[str(packed)], out=str(tmp_path / "b"), **OPTIONS))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_parts_of_a_big_jsonl_file_read_by_two_workers_give_the_same_shards(tmp_path, monkeypatch):
    docs = _documents(400, 2)
    src = _write(tmp_path / "c.jsonl", docs, "text")
    one = prepare(PrepareOptions(inputs=[str(src)], out=str(tmp_path / "one"), workers=1, **OPTIONS))
    monkeypatch.setattr(prepare_work, "TASK_BYTES", 4_000)  # cut at line ends every 4 kB
    monkeypatch.setattr(prepare_work, "MIN_PARALLEL_BYTES", 0)
    two = prepare(PrepareOptions(inputs=[str(src)], out=str(tmp_path / "two"), workers=2, **OPTIONS))
    assert one["tasks"] == 1 and two["tasks"] > 10
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


BAD = [b"not json at all", b"[1, 2, 3]", b'{"text": null}', b'{"text": 5}', b'{"text": "nul \\u0000 inside"}',
       b'{"text": {"nested": "object"}}']


def test_bad_records_are_counted_and_skipped(tmp_path):
    docs = _documents(40, 3)
    good = [json.dumps({"text": d}).encode() for d in docs]
    lines = good[:5] + BAD[:2] + [b"", b"   "] + good[5:20] + BAD[2:] + good[20:]
    # half of a UTF-16 pair alone: no character, replaced (U+FFFD) and counted as bad UTF-8 is in a text file
    lines.append(b'{"text": "lone \\ud800 half"}')
    src = tmp_path / "c.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "c.txt").write_text("\n".join(docs + ["lone \ufffd half"]) + "\n", encoding="utf-8")
    proc = run_cli("prepare", str(src), "--out", str(tmp_path / "out"), "--heldout-fraction", "0.2")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["records"] == 41 + len(BAD) and m["bad_records_skipped"] == len(BAD) and m["lines_with_bad_utf8"] == 1
    first = f"{src}:6: not JSON (Expecting value)"  # line 6 of the file: its record number
    assert m["warnings"] == [f"{len(BAD)} of {m['records']} records were skipped as bad (the first: {first})"]
    assert f"elmo-dist: warning: {m['warnings'][0]}" in proc.stderr and f"skipped {len(BAD)} bad records" in proc.stdout
    prepare(PrepareOptions(inputs=[str(tmp_path / "c.txt")], out=str(tmp_path / "text"), heldout_fraction=0.2))
    assert _files(tmp_path / "out") == {**_files(tmp_path / "text"), "summary.json": _files(tmp_path / "out")[
        "summary.json"]}


def test_null_parquet_texts_are_bad_records(tmp_path):
    texts = ["a b c", None, "d e", "f g h", None]
    meta = [{"text": t} if i != 3 else None for i, t in enumerate(texts)]  # a null struct: no text either
    pq.write_table(pa.table({"body": texts, "meta": meta}), tmp_path / "c.parquet")
    m = prepare(PrepareOptions(inputs=[str(tmp_path / "c.parquet")], out=str(tmp_path / "out"), text_field="meta.text",
                               heldout_fraction=0))
    assert m["records"] == 5 and m["bad_records_skipped"] == 3 and m["splits"]["train"]["words"] == 5
    assert m["warnings"][0].endswith(f"(the first: {tmp_path / 'c.parquet'}:2: its text is null)")


@pytest.mark.parametrize("field,says", [
    ("text", "c.jsonl:4: the record has no field 'text' (the record has: id, body)"),
    ("meta.txt", "c.jsonl:1: the record has no field 'meta.txt' (its 'meta' has: text)"),
])
def test_a_missing_jsonl_field_is_one_error_naming_file_and_record(tmp_path, field, says):
    records = [{"id": 0, "text": "a b", "meta": {"text": "a b"}}] * 3 + [{"id": 3, "body": "c d"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    line = one_error_line(run_cli("prepare", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "out"),
                                  "--text-field", field, check=False))
    assert line == f"elmo-dist: error: {tmp_path}/{says}; name the field of the text with --text-field"
    assert list((tmp_path / "out").iterdir()) == []  # no manifest, no scratch


def test_a_missing_field_in_a_later_part_of_the_file_names_its_own_line(tmp_path, monkeypatch):
    rows = [json.dumps({"text": f"w{i} w{i + 1}"}) for i in range(3000)]
    rows[2500] = json.dumps({"body": "x"})
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(prepare_work, "TASK_BYTES", 5_000)
    monkeypatch.setattr(prepare_work, "MIN_PARALLEL_BYTES", 0)
    with pytest.raises(DataError, match=f"^{tmp_path}/c.jsonl:2501: the record has no field 'text'"):
        prepare(PrepareOptions(inputs=[str(tmp_path / "c.jsonl")], out=str(tmp_path / "out"), workers=2))
    assert list((tmp_path / "out").iterdir()) == []


def test_parquet_schema_without_the_field_and_unreadable_files(tmp_path):
    pq.write_table(pa.table({"id": [1], "body": ["a b"], "n": [2]}), tmp_path / "c.parquet")
    whole = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "w%d"}\n' % i for i in range(5000)))
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 not really")
    cases = [(["c.parquet"], "c.parquet: no field 'text' (its schema has: id, body, n); name the field"),
             (["c.parquet", "--text-field", "n"], "c.parquet: the field 'n' is int64, not text"),
             (["cut.jsonl.zst"], "cut.jsonl.zst: cannot read ("),
             (["fake.parquet"], "fake.parquet: cannot read as Parquet (")]
    for args, says in cases:
        line = one_error_line(run_cli("prepare", *[str(tmp_path / a) if "." in a else a for a in args],
                                      "--out", str(tmp_path / "out"), check=False))
        assert line.startswith(f"elmo-dist: error: {tmp_path}/{says}"), line


def test_a_field_that_is_never_text_says_so(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"meta": {"text": f"w{i}"}}) + "\n" for i in range(50)))
    line = one_error_line(run_cli("prepare", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "out"),
                                  "--text-field", "meta", check=False))
    assert "the corpus has no tokens in its training part: all 50 records were skipped as bad" in line
    assert "its text is a dict, not a string); is --text-field 'meta' the field of the text?" in line
