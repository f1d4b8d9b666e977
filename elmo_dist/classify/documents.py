"""Labelled text for the downstream classifier: AG News CSV, CSV/TSV with a header, JSONL, folder-per-class.

    splits = build_splits("ag_news/train.csv", test="ag_news/test.csv")   # valid split off train

Every reader yields (source, text, label); `read_examples` collapses whitespace runs to one space
and counts (rather than rejects) documents whose text is empty, because big scraped sets often
hold a few and one bad row should not stop a run. Everything else that is wrong with the input is
one `DataError` starting `path:line:` (1-based; for a folder-per-class document, just its path).
Files are decoded line by line (`TextLines`: only "\\n" ends a line, so form feeds, U+0085 and
U+2028 inside a text do not shift line numbers), so bad UTF-8 is reported on the line that holds
it. A byte-order mark at the start of a file is dropped and counted in `skipped`.

Missing test/valid sets are split off the training set with scikit-learn's stratified
`train_test_split` (test first, then valid from the rest); each split keeps file order.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from elmo_dist.data.compressed import READ_ERRORS, open_bytes
from elmo_dist.data.reader import TextLines
from elmo_dist.errors import DataError

FORMATS = ("auto", "agnews", "csv", "tsv", "jsonl", "folders")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")  # class index 1..4
EMPTY_TEXT = "empty_text"
BOM_DROPPED = "byte_order_mark"
# the csv default (128 KiB) is smaller than some long articles; a runaway unclosed quote still ends
# at the end of the file and then fails the field-count check, naming the line it started on
_FIELD_LIMIT = 1 << 26
_WHITESPACE = re.compile(r"\s+")
# AG News marks the line breaks of the original HTML with backslashes (`\\`, sometimes a lone `\`)
_BACKSLASHES = re.compile(r"\\+")


@dataclass
class Example:
    text: str
    label: str
    source: str
    """`path:line` (or the document's path for folder-per-class), for error messages."""


@dataclass
class Splits:
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    labels: list[str]
    """Index i of the classifier is labels[i]: AG News class order, else the sorted training labels."""
    skipped: dict[str, int] = field(default_factory=dict)


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """label -> class index, the inverse of `Splits.labels`."""
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        dup = next(label for label, n in Counter(labels).items() if n > 1)
        raise DataError(f"label {dup!r} appears twice in the label list")
    return index


def detect_format(path: str | Path) -> str:
    """The concrete format `auto` stands for: by kind of path, extension and (for .csv) the first row."""
    p = Path(path)
    if p.is_dir():
        return "folders"
    name = p.name.lower()
    for packed in (".gz", ".zst", ".zstd"):  # read decompressed (TextLines): the name before them counts
        name = name.removesuffix(packed)
    ext = Path(name).suffix
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if ext == ".tsv":
        return "tsv"
    if ext == ".csv":
        return "agnews" if _looks_like_agnews(p) else "csv"
    raise DataError(f"{p}: cannot tell the format from the name (want .csv, .tsv, .jsonl, .json or a folder); "
                    f"set the format to one of {', '.join(FORMATS[1:])}")


def _looks_like_agnews(path: Path) -> bool:
    # sniffing only: bad bytes are reported, with their line, by the real read that follows
    try:
        with open_bytes(path) as f:  # -sig: a BOM is no text; an AG News row is far shorter than 64 KiB
            head = f.read(1 << 16).decode("utf-8-sig", errors="replace")
    except READ_ERRORS:
        return False  # the real read says what is wrong
    first = next(csv.reader(io.StringIO(head, newline="")), None)
    if not first or len(first) != 3:
        return False
    try:
        int(first[0])
    except ValueError:
        return False
    return True


def read_examples(path: str | Path, fmt: str = "auto", text_fields: Sequence[str] = ("text",),
                  label_field: str = "label", skipped: dict | None = None) -> list[Example]:
    """All examples of one file (or class-folder tree); empty texts are counted in `skipped`."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {'directory' if fmt == 'folders' else 'file'} not found")
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    fmt = detect_format(p) if fmt == "auto" else fmt
    if (fmt == "folders") != p.is_dir():
        want = "a directory with one sub-folder per class" if fmt == "folders" else f"a {fmt} file"
        raise DataError(f"{p}: the {fmt} format needs {want}")
    fields = [text_fields] if isinstance(text_fields, str) else list(text_fields)
    if not fields:
        raise DataError("text_fields is empty: name at least one text column or field")
    counts = skipped if skipped is not None else {}
    before = counts.get(EMPTY_TEXT, 0)
    examples = list(_examples(_rows(p, fmt, fields, label_field, counts), counts))
    if not examples:
        n = counts.get(EMPTY_TEXT, 0) - before
        why = f" ({n} with empty text skipped)" if n else ""
        layout = " (expected PATH/<class>/<file>)" if fmt == "folders" else ""
        raise DataError(f"{p}: no examples{why}{layout}")
    return examples


def _rows(p: Path, fmt: str, fields: list[str], label_field: str, counts: dict) -> Iterator[tuple[str, str, str]]:
    """(source, text, label) per example; byte-order marks dropped are counted in `counts`."""
    if fmt == "agnews":
        return _read_agnews(p, counts)
    if fmt in ("csv", "tsv"):
        return _read_table(p, "\t" if fmt == "tsv" else ",", fields, label_field, counts)
    if fmt == "jsonl":
        return _read_jsonl(p, fields, label_field, counts)
    return _read_folders(p, counts)


def _examples(rows: Iterable[tuple[str, str, str]], skipped: dict) -> Iterator[Example]:
    for source, text, label in rows:
        text = _WHITESPACE.sub(" ", text).strip()
        if not text:
            skipped[EMPTY_TEXT] = skipped.get(EMPTY_TEXT, 0) + 1
            continue
        label = label.strip()
        if not label:
            raise DataError(f"{source}: the label is empty")
        yield Example(text=text, label=label, source=source)


def _count_bom(lines: TextLines, counts: dict) -> None:
    if lines.boms:
        counts[BOM_DROPPED] = counts.get(BOM_DROPPED, 0) + lines.boms


def _decoded_lines(path: Path, counts: dict, keep_ends: bool) -> Iterator[str]:
    """The file's lines (line ends kept for csv, which needs them inside quoted fields), decoded one
    by one so errors have a line; a leading BOM is dropped and counted once the file is read."""
    lines = TextLines(path, keep_ends=keep_ends, max_line_bytes=_FIELD_LIMIT)
    yield from lines
    _count_bom(lines, counts)


def _csv_records(path: Path, delimiter: str, counts: dict) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each record; a quoted field may span lines. Blank lines are skipped."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    reader = csv.reader(_decoded_lines(path, counts, keep_ends=True), delimiter=delimiter)
    start = 1
    try:
        for row in reader:
            end = reader.line_num
            if row and not (len(row) == 1 and not row[0].strip()):
                yield start, end, row
            start = end + 1
    except csv.Error as e:
        raise DataError(f"{path}:{start}: {e}") from None


def _field_count_error(path: Path, start: int, end: int, expected: int, row: list[str]) -> DataError:
    spans = f"; the row runs on to line {end}: an unclosed quote?" if end > start else ""
    return DataError(f"{path}:{start}: expected {expected} fields, got {len(row)}{spans}")


def _read_agnews(path: Path, counts: dict) -> Iterator[tuple[str, str, str]]:
    """Headerless `"class index","title","description"` rows, class 1..4."""
    for start, end, row in _csv_records(path, ",", counts):
        where = f"{path}:{start}"
        if len(row) != 3:
            raise _field_count_error(path, start, end, 3, row)
        try:
            cls = int(row[0])
        except ValueError:
            raise DataError(f"{where}: class index {row[0]!r} is not an integer (AG News rows are "
                            f"class,title,description with no header; "
                            f"use the csv format for a file with one)") from None
        if not 1 <= cls <= len(AGNEWS_LABELS):
            raise DataError(f"{where}: class index {cls} is out of range 1..{len(AGNEWS_LABELS)}")
        yield where, _BACKSLASHES.sub(" ", f"{row[1]} {row[2]}"), AGNEWS_LABELS[cls - 1]


def _read_table(path: Path, delimiter: str, fields: list[str], label_field: str,
                counts: dict) -> Iterator[tuple[str, str, str]]:
    """CSV/TSV with a header row; the text is the named text columns joined with a space."""
    records = _csv_records(path, delimiter, counts)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: the file is empty (expected a header row)")
    header_line, _, header = first
    header = [h.strip() for h in header]
    missing = [c for c in (*fields, label_field) if c not in header]
    if missing:
        hint = ""
        if len(header) == 1 and any(d in header[0] for d in ",\t;"):
            hint = f" (one column only: is the delimiter {'tab' if delimiter == chr(9) else 'comma'} right?)"
        raise DataError(f"{path}:{header_line}: no column {', '.join(map(repr, missing))} in the header; "
                        f"the columns are {', '.join(map(repr, header))}{hint}")
    text_cols = [header.index(c) for c in fields]
    label_col = header.index(label_field)
    for start, end, row in records:
        if len(row) != len(header):
            raise _field_count_error(path, start, end, len(header), row)
        yield f"{path}:{start}", " ".join(row[i] for i in text_cols), row[label_col]


def _read_jsonl(path: Path, fields: list[str], label_field: str, counts: dict) -> Iterator[tuple[str, str, str]]:
    """One JSON object per line; blank lines (form feeds and other whitespace only) are skipped."""
    for n, line in enumerate(_decoded_lines(path, counts, keep_ends=False), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                            f"the jsonl format needs one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in (*fields, label_field) if k not in obj]
        if missing:
            raise DataError(f"{where}: no field {', '.join(map(repr, missing))}; "
                            f"the object has {', '.join(map(repr, obj)) or 'no fields'}")
        texts = [_json_text(obj[k], where, k) for k in fields]
        yield where, " ".join(texts), _json_label(obj[label_field], where, label_field)


def _json_text(value, where: str, key: str) -> str:
    if value is None:  # a null text is an empty text: counted and skipped
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _json_label(value, where: str, key: str) -> str:
    # integer class ids are common in JSONL exports; they become their decimal string
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string or an integer, got {type(value).__name__}")
    return value


def _read_folders(root: Path, counts: dict) -> Iterator[tuple[str, str, str]]:
    """ROOT/<class>/<file>: each regular, non-hidden file is one document of that class."""
    classes = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    for class_dir in classes:
        for f in sorted(class_dir.iterdir(), key=lambda f: f.name):
            if f.name.startswith(".") or not f.is_file():
                continue
            lines = TextLines(f, keep_ends=True, max_line_bytes=_FIELD_LIMIT)
            text = "".join(lines)
            _count_bom(lines, counts)
            yield str(f), text, class_dir.name


def build_splits(train: str, valid: str = "", test: str = "", fmt: str = "auto",
                 text_fields: Sequence[str] = ("text",), label_field: str = "label",
                 valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Train/valid/test from the given files; a missing test, then valid, set is split off train."""
    for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    skipped: dict[str, int] = {}
    train_ex = read_examples(train, fmt, text_fields, label_field, skipped)
    valid_ex = read_examples(valid, fmt, text_fields, label_field, skipped) if valid else None
    test_ex = read_examples(test, fmt, text_fields, label_field, skipped) if test else None
    seen = {e.label for e in train_ex}
    for given in (valid_ex, test_ex):
        unseen = next((e for e in given or () if e.label not in seen), None)
        if unseen is not None:
            raise DataError(f"{unseen.source}: label {unseen.label!r} never occurs in the training data "
                            f"({train}: {', '.join(map(repr, sorted(seen)))})")
    _check_classes(train_ex, train, seen, [])
    split_off = [what for what, given in (("test", test_ex), ("validation", valid_ex)) if given is None]
    if test_ex is None:
        train_ex, test_ex = _stratified_split(train_ex, test_fraction, seed, "test", train)
    if valid_ex is None:
        train_ex, valid_ex = _stratified_split(train_ex, valid_fraction, seed, "validation", train)
    _check_classes(train_ex, train, seen, split_off)
    agnews = (detect_format(train) if fmt == "auto" else fmt) == "agnews"
    labels = list(AGNEWS_LABELS) if agnews else sorted(seen)
    return Splits(train=train_ex, valid=valid_ex, test=test_ex, labels=labels, skipped=skipped)


def _check_classes(train_ex: list[Example], path: str, seen: set[str], split_off: list[str]) -> None:
    """Refuse a training split of one class. Neither the classifier nor the TF-IDF baseline can learn
    from it, and without this check every variant trained before the baseline failed with a traceback.
    A stratified split can leave a small class entirely in the held-out sets: `split_off` says which."""
    labels = {e.label for e in train_ex}
    if len(labels) > 1:
        return
    (only,) = labels
    after = ""
    if seen - labels:
        lost = ", ".join(map(repr, sorted(seen - labels)))
        after = (f" once the {' and '.join(split_off)} set{'s are' if len(split_off) > 1 else ' is'} split off "
                 f"(every example of {lost} went there: add examples or lower the fraction)")
    raise DataError(f"{path}: every training document has label {only!r}{after}; "
                    f"a classifier needs at least 2 classes")


def _stratified_split(examples: list[Example], fraction: float, seed: int, what: str,
                      path: str) -> tuple[list[Example], list[Example]]:
    """(rest, held out): a seeded stratified split, each part in the original order."""
    if fraction == 0.0:
        return examples, []
    counts = Counter(e.label for e in examples)
    small = sorted(label for label, n in counts.items() if n < 2)
    if small:
        raise DataError(f"{path}: class {small[0]!r} has {counts[small[0]]} example; a stratified {what} split "
                        f"needs at least 2 per class (add examples or give a {what} file)")
    from sklearn.model_selection import train_test_split  # slow to import; only needed here

    try:
        rest, held = train_test_split(list(range(len(examples))), test_size=fraction,
                                      stratify=[e.label for e in examples], random_state=seed)
    except ValueError as e:  # e.g. fewer held-out examples than classes
        raise DataError(f"{path}: cannot split off a stratified {what} set of {fraction:g} "
                        f"over {len(counts)} classes and {len(examples)} examples ({e})") from None
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(held)]
