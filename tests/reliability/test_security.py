"""Nothing a user hands us runs code: checkpoints load with weights_only=True (a crafted pickle is
refused, its payload never runs), configs are safe YAML, config paths never reach a shell, and the
sbatch scripts quote every variable."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow(seconds=23)  # its serial seconds: conftest starts the slowest first


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _reseal(ckpt: Path) -> None:
    """Rewrite COMPLETE so the tampered checkpoint passes the checksum test: only the loader stands in the way."""
    marker = json.loads((ckpt / "COMPLETE").read_text())
    for name in marker["sha256"]:
        marker["sha256"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


def _pretrain_args(run: Path, data: Path) -> list[str]:
    return ["pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.eval_every=0", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory, grammar_corpus) -> Path:
    """A run stopped at step 3: each case below tampers with its own copy."""
    run = tmp_path_factory.mktemp("victim") / "run"
    run_cli(*_pretrain_args(run, grammar_corpus), "train.max_steps=3")
    return run


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng-rank0.pt", "state-rank0.pt"])
def test_a_crafted_pickle_in_a_checkpoint_does_not_run(tmp_path, grammar_corpus, three_step_run, victim):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(three_step_run, run)
    args = _pretrain_args(run, grammar_corpus)
    ckpt = run / "checkpoints" / "step-3"
    (ckpt / victim).write_bytes(pickle.dumps(Payload(marker)))
    assert not marker.exists()
    _reseal(ckpt)
    proc = run_cli(*args, "train.max_steps=6", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and victim in lines[0] and "cannot be loaded safely" in lines[0], proc.stderr
    assert not marker.exists(), "the pickle's payload ran"


def test_a_yaml_config_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'train:\n  run_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    proc = run_cli("pretrain", str(cfg), check=False)
    assert proc.returncode == 2 and "evil.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_config_paths_never_reach_a_shell(tmp_path, grammar_corpus):
    marker = tmp_path / "PWNED"
    odd = tmp_path / f"run $(touch {marker}) `touch {marker}`; touch {marker}"
    run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir='{odd}'",
            *TINY_OVERRIDES, "train.eval_every=0", "train.max_steps=2")
    assert (odd / "summary.json").exists() and not marker.exists()


def unquoted_expansions(text: str) -> list[str]:
    """Shell parameter expansions outside double quotes ($((...)) arithmetic aside), as 'line: text'."""
    found, stack, i, line = [], ["top"], 0, 1
    while i < len(text):
        c, ctx = text[i], stack[-1]
        if c == "\n":
            line += 1
        if c == "\\":
            i += 2
            continue
        if text.startswith("$((", i):
            i = text.index("))", i) + 2
            continue
        if text.startswith("$(", i):
            stack.append("cmd")
            i += 2
            continue
        if ctx == "dq":
            if c == '"':
                stack.pop()
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;"):
            i = text.find("\n", i)
            continue
        elif c == "'":
            end = text.index("'", i + 1)
            line += text[i:end].count("\n")
            i = end
        elif c == '"':
            stack.append("dq")
        elif c == ")" and ctx == "cmd":
            stack.pop()
        elif c == "$":
            found.append(f"{line}: {text[i:text.find(chr(10), i)]}")
        i += 1
    return found


def test_the_quote_checker_catches_an_unquoted_variable():
    assert unquoted_expansions('echo "$a" $b\n') == ["1: $b"]
    assert unquoted_expansions('x="$(cmd "${y}" | head)"\n# $z\necho \'$w\' "$((1 + $n))"\n') == []


@pytest.mark.parametrize("script", ["slurm/pretrain.sh", "slurm/finetune.sh"])
def test_sbatch_scripts_quote_every_variable(script):
    text = (REPO / script).read_text()
    assert unquoted_expansions(text) == []
    assert re.search(r"\beval\b", text) is None
