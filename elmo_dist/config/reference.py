"""The config reference files, generated from the config dataclasses' field docstrings.

    python -m elmo_dist.config.reference --write   # regenerate configs/reference/*.yaml
    python -m elmo_dist.config.reference --check   # exit 1 if either file is stale

Each key is documented once, in the docstring under its field (elmo_dist/config/pretrain.py,
finetune.py, process_group.py, slurm.py). This module renders every section and key of
`PretrainConfig` and `FinetuneConfig` with its default value and, as `#` lines right above it, its
docstring. The output is itself a valid config that loads to the defaults (see REQUIRED_EXAMPLES
for the one exception).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

import yaml

from elmo_dist.config import base
from elmo_dist.config.finetune import FinetuneConfig
from elmo_dist.config.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[2]
WRITE_COMMAND = "python -m elmo_dist.config.reference --write"

# file (relative to the repo root) -> the root dataclass it documents
TARGETS: dict[str, type] = {
    "configs/reference/pretrain.yaml": PretrainConfig,
    "configs/reference/finetune.yaml": FinetuneConfig,
}

# Keys whose default does not pass validation on its own (there is nothing sensible to default to):
# the reference shows an example value instead, so that the file still loads as a config.
REQUIRED_EXAMPLES: dict[type, dict[str, object]] = {
    FinetuneConfig: {"data.train": "data/train.csv"},
}


def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring} of one dataclass and the dataclasses it extends, read from their source.

    Python drops a string literal under a class attribute, so it can only be read back from the
    source: the `ast` of the class body, where an attribute docstring is the Expr after the field.
    """
    docs = {}
    # base classes first, so that a field a subclass redefines takes the subclass's docstring
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


# the loader's own rule for what is a section (a field whose default factory is a dataclass), so the
# reference can never disagree with base.valid_keys
_section_type = base._section_type


def key_docs(root: type, prefix: str = "") -> dict[str, str]:
    """{dotted key: docstring} for every field of a config, sections included ('train', 'train.seed')."""
    docs = {}
    own = field_docs(root)
    for f in dataclasses.fields(root):
        docs[prefix + f.name] = own.get(f.name, "")
        section = _section_type(f)
        if section:
            docs.update(key_docs(section, prefix + f.name + "."))
    return docs


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes every string a number parser accepts."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # OmegaConf's loader reads more plain scalars as numbers than PyYAML's resolver (e.g. 1e-8), so
    # PyYAML alone would leave such a string unquoted and it would load back as a float
    try:
        float(data)
        style = "'"
    except ValueError:
        style = None  # PyYAML still quotes what its own resolver would retype (no, true, null, ...)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def yaml_value(value) -> str:
    """One value as inline YAML that reads back as the same value (so a string 'no' is quoted)."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=float("inf"), allow_unicode=True)
    # a bare scalar at the document root gets an explicit document end ('...'), which has no place inline
    return text.removesuffix("\n...\n").rstrip("\n")


def _comment(doc: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in doc.splitlines()]


def _render_fields(root: type, values: dict, docs: dict[str, str], examples: dict, prefix: str,
                   depth: int) -> list[str]:
    indent = "  " * depth
    lines = []
    for f in dataclasses.fields(root):
        key = prefix + f.name
        if not docs.get(key):
            raise ValueError(f"config key '{key}' ({root.__name__}.{f.name}) has no docstring; add one under the field")
        if depth == 0 and lines:
            lines.append("")  # a blank line between top-level entries, for reading
        lines += _comment(docs[key], indent)
        section = _section_type(f)
        if section:
            lines.append(f"{indent}{f.name}:")
            lines += _render_fields(section, values[f.name], docs, examples, key + ".", depth + 1)
        elif key in examples:
            note = f"required; an example (the default {yaml_value(values[f.name])} does not validate)"
            lines.append(f"{indent}{f.name}: {yaml_value(examples[key])}  # {note}")
        else:
            lines.append(f"{indent}{f.name}: {yaml_value(values[f.name])}")
    return lines


def render(root: type) -> str:
    """The reference YAML of one root config dataclass: header, then every section and key."""
    name = f"{root.__module__}.{root.__qualname__}"
    header = [
        f"# Every key of {name}: its default value, and its meaning as the comment above it.",
        "# GENERATED from the config dataclasses' field docstrings by",
        f"#   {WRITE_COMMAND}",
        "# Do not edit by hand: change the docstring, then rerun that command (a test checks that they agree).",
        "# The file is a valid config as it stands.",
    ]
    values = base.to_container(root())
    body = _render_fields(root, values, key_docs(root), REQUIRED_EXAMPLES.get(root, {}), "", 0)
    return "\n".join(header + [""] + body) + "\n"


def stale_files(repo: Path | None = None) -> list[str]:
    """The reference files that are missing or differ from what `render` gives now."""
    repo = repo or REPO
    stale = []
    for rel, root in TARGETS.items():
        path = repo / rel
        if not path.is_file() or path.read_text() != render(root):
            stale.append(rel)
    return stale


def write_all(repo: Path | None = None) -> list[str]:
    """(Re)write every reference file; returns the paths written."""
    repo = repo or REPO
    for rel, root in TARGETS.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(root))
    return list(TARGETS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elmo_dist.config.reference", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate configs/reference/*.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 if a reference file is stale")
    args = parser.parse_args(argv)
    if args.write:
        for rel in write_all():
            print(f"wrote {rel}")
        return 0
    stale = stale_files()
    if stale:
        print(f"stale config reference (not what the field docstrings give): {', '.join(stale)}; run {WRITE_COMMAND}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
