"""Bad input everywhere a user hands us a file or a value, as one table: every case must exit non-zero
with exactly one line `elmo-dist: error: ...` naming the file, line or key, print no traceback, and
leave no output that looks complete. Odd-but-usable input is a documented, counted skip instead."""
from __future__ import annotations

import gzip
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli, write_grammar_corpus

pytestmark = pytest.mark.slow(seconds=61)  # its serial seconds: conftest starts the slowest first

DEBUG = str(REPO / "configs/debug.yaml")
FINETUNE = str(REPO / "configs/finetune.yaml")


def _corpus(t: Path, name: str, content: bytes) -> Path:
    (t / name).write_bytes(content)
    return t / name


def _prepare(t: Path, *inputs: str) -> list[str]:
    return ["prepare", *inputs, "--out", str(t / "out")]


def _pretrain(t: Path, data, *extra: str) -> list[str]:
    return ["pretrain", DEBUG, f"data.dir={data}", f"train.run_dir={t / 'run'}", *TINY_OVERRIDES,
            "train.eval_every=0", "train.max_steps=3", *extra]


def _copy_prepared(t: Path, prepared: Path) -> Path:
    shutil.copytree(prepared, t / "prepared")
    return t / "prepared"


def _vocab_case(lines: list[str]):
    def build(t, ctx):
        data = _copy_prepared(t, ctx["prepared"])
        (data / "vocab.txt").write_text("\n".join(lines) + "\n")
        return _pretrain(t, data), ["vocab.txt"], ["run/summary.json"]
    return build


def _finetune(t: Path, ctx, train: Path, *extra: str) -> list[str]:
    return ["finetune", FINETUNE, f"bilm.path={ctx['bilm']}", f"data.train={train}", f"train.run_dir={t / 'ft'}",
            "variants=[frozen]", "train.epochs=1", "train.device=cpu", *extra]


def _classify_case(name: str, content: str, must: str, *extra: str):
    def build(t, ctx):
        f = t / name
        f.write_text(content)
        return _finetune(t, ctx, f, *extra), [must], ["ft/summary.json"]
    return build


def _config_case(*overrides: str, must: str):
    def build(t, ctx):
        return _pretrain(t, ctx["prepared"], *overrides), [must], ["run/summary.json", "run/checkpoints"]
    return build


def _yaml_case(text: str, must: str):
    def build(t, ctx):
        (t / "bad.yaml").write_text(text)
        return ["pretrain", str(t / "bad.yaml")], ["bad.yaml", must], []
    return build


def _prepare_case(name: str, content: bytes, must: str):
    def build(t, ctx):
        return _prepare(t, str(_corpus(t, name, content))), [name, must], ["out/manifest.json"]
    return build


def _truncated_gzip(t, ctx):
    blob = gzip.compress(b"the cat sat on the mat .\n" * 5000)
    return _prepare(t, str(_corpus(t, "cut.txt.gz", blob[: len(blob) // 2]))), ["cut.txt.gz", "cannot read"], \
        ["out/manifest.json"]


def _run_with_checkpoint(t, ctx) -> Path:
    """A finished 3-step run at t/run, for a case to damage or resume: a copy of the one ctx trained
    (three cases each trained the same run before; a copied run directory is as good a run)."""
    shutil.copytree(ctx["run"], t / "run")
    return t / "run" / "checkpoints" / "step-3"


def _other_architecture(t, ctx):
    _run_with_checkpoint(t, ctx)
    return _pretrain(t, ctx["prepared"], "train.max_steps=6", "model.lstm_dim=96"), \
        ["architecture differs", "model.lstm_dim: 64 -> 96"], []


def _truncated_checkpoint(t, ctx):
    ckpt = _run_with_checkpoint(t, ctx)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["evaluate", str(ckpt)], ["step-3", "model.safetensors does not match its checksum"], ["run/eval"]


def _truncated_only_checkpoint_on_resume(t, ctx):
    ckpt = _run_with_checkpoint(t, ctx)
    (ckpt / "optimizer.pt").write_bytes(b"")
    return _pretrain(t, ctx["prepared"], "train.max_steps=6"), ["no loadable checkpoint", "optimizer.pt"], \
        ["run/checkpoints/step-6"]


def _not_a_checkpoint(t, ctx):
    (t / "junk").mkdir()
    (t / "junk" / "notes.txt").write_text("hello")
    return ["embed", str(t / "junk"), str(t / "junk" / "notes.txt"), str(t / "out.h5")], ["junk", "no checkpoints"], \
        ["out.h5"]


def _embed_bad_weights(t, ctx):
    (t / "s.txt").write_text("the cat sees the fish .\n")
    return ["embed", str(ctx["bilm"]), str(t / "s.txt"), str(t / "out.h5"), "--weights", "0.5,x"], ["--weights"], \
        ["out.h5"]


def _cli(*argv: str, must: str):
    def build(t, ctx):
        return list(argv), [must], []
    return build


CASES = {
    # corpus files
    "corpus empty": _prepare_case("empty.txt", b"", "no tokens"),
    "corpus only blank lines": _prepare_case("blank.txt", b"\n  \n\t\n\n", "no tokens"),
    "corpus binary": _prepare_case("blob.bin", bytes(range(256)) * 64, "binary file"),
    "corpus truncated gzip": _truncated_gzip,
    "corpus glob matches nothing": lambda t, c: (_prepare(t, str(t / "*.nothing")), ["*.nothing", "no file matches"],
                                                 ["out/manifest.json"]),
    "corpus missing file": lambda t, c: (_prepare(t, str(t / "absent.txt")), ["absent.txt", "not found"],
                                         ["out/manifest.json"]),
    "corpus bad heldout fraction": lambda t, c: (_prepare(t, str(c["text"])) + ["--heldout-fraction", "1.5"],
                                                 ["--heldout-fraction"], ["out/manifest.json"]),
    "prepared dir without manifest": lambda t, c: (_pretrain(t, t), [str(t), "manifest"], ["run/summary.json"]),
    # vocab files
    "vocab missing specials": _vocab_case(["the", "cat", "<S>"]),
    "vocab duplicate entry": _vocab_case(["<S>", "</S>", "<UNK>", "cat", "dog", "cat"]),
    "vocab token with a space": _vocab_case(["<S>", "</S>", "<UNK>", "big cat"]),
    # classification files
    "classify csv without label column": _classify_case("t.csv", "text,topic\nhello,a\n", "t.csv:1"),
    "classify csv empty": _classify_case("t.csv", "", "t.csv"),
    "classify jsonl invalid line": _classify_case("t.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', "t.jsonl:2"),
    "classify jsonl not an object": _classify_case("t.jsonl", '["a", "x"]\n', "t.jsonl:1"),
    "classify jsonl missing field": _classify_case("t.jsonl", '{"body": "a", "label": "x"}\n', "t.jsonl:1"),
    "classify jsonl label is a list": _classify_case("t.jsonl", '{"text": "a", "label": [1]}\n', "t.jsonl:1"),
    "classify unknown extension": _classify_case("t.xlsx", "x", "t.xlsx"),
    "classify train file missing": lambda t, c: (_finetune(t, c, t / "nope.csv"), ["nope.csv", "not found"],
                                                 ["ft/summary.json"]),
    "classify one example per class": _classify_case(
        "t.jsonl", "".join(json.dumps({"text": f"doc {i}", "label": f"c{i}"}) + "\n" for i in range(4)), "t.jsonl"),
    # configs
    "config unknown key": _config_case("train.max_step=5", must="did you mean 'train.max_steps'"),
    "config wrong type": _config_case("train.max_steps=many", must="'train.max_steps'"),
    "config negative size": _config_case("model.lstm_dim=-4", must="'model.lstm_dim'"),
    "config unroll_steps=0": _config_case("data.unroll_steps=0", must="'data.unroll_steps'"),
    "config unknown flavour": _config_case("model.flavour=huge", must="model.flavour 'huge'"),
    "config zero stage 5": _config_case("dist.zero_stage=5", must="'dist.zero_stage'"),
    "config fp16 on cpu": _config_case("dist.mixed_precision=fp16", must="'dist.mixed_precision'"),
    "config bad signal name": _config_case("train.stop_signals=[USR9]", must="'train.stop_signals'"),
    "config bad slurm cluster": _config_case("slurm.cluster=pbs", must="'slurm.cluster'"),
    "config file missing": lambda t, c: (["pretrain", str(t / "none.yaml")], ["none.yaml", "not found"], []),
    "config invalid yaml": _yaml_case("train:\n  max_steps: [1,\n", must="not valid YAML"),
    "config not a mapping": _yaml_case("- a\n- b\n", must="expected a mapping"),
    "config section is a scalar": _yaml_case("train: 5\n", must="'train'"),
    # checkpoints
    "checkpoint from another architecture": _other_architecture,
    "checkpoint truncated": _truncated_checkpoint,
    "checkpoint only one, damaged, on resume": _truncated_only_checkpoint_on_resume,
    "not a checkpoint at all": _not_a_checkpoint,
    # CLI misuse
    "cli no command": _cli(must="COMMAND"),
    "cli unknown command": _cli("train", must="invalid choice: 'train'"),
    "cli missing argument": _cli("prepare", "x.txt", must="--out"),
    "cli override without =": lambda t, c: (_pretrain(t, c["prepared"], "train.max_steps"), ["key=value"], []),
    "cli bad --weights": _embed_bad_weights,
}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, grammar_corpus, tiny_bilm):
    """What the cases read: the prepared corpus, a biLM, a small text, and a finished 3-step run."""
    t = tmp_path_factory.mktemp("ctx")
    run_cli(*_pretrain(t, grammar_corpus, "checkpoint.every=0"))
    return {"prepared": grammar_corpus, "bilm": tiny_bilm, "text": write_grammar_corpus(t / "text.txt", 50),
            "run": t / "run"}


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, ctx) -> dict:
    """Every case run once, two at a time (each is a fresh `elmo-dist` process, mostly import time)."""
    def run(name):
        t = tmp_path_factory.mktemp("case")
        argv, must_name, must_not_exist = CASES[name](t, ctx)
        return name, (t, run_cli(*argv, check=False), must_name, must_not_exist)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clean_error(name, outcomes):
    tmp_path, proc, must_name, must_not_exist = outcomes[name]
    assert proc.returncode != 0, f"{name}: exit 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("elmo-dist: error: "), proc.stderr
    for part in must_name:
        assert part in errors[0], f"{name}: {part!r} not named in: {errors[0]}"
    for rel in must_not_exist:
        assert not (tmp_path / rel).exists(), f"{name}: {rel} exists after a failed command"


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "pretrain", str(tmp_path / "none.yaml"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "none.yaml" in proc.stderr


# documented, counted skips: usable input with odd lines goes through and says what it skipped

def test_bad_utf8_and_overlong_lines_are_counted_skips(tmp_path):
    good = b"the cat sat on the mat .\n" * 50
    blob = good + b"caf\xe9 au lait .\n" + b"x" * (3 << 20) + b"\n" + good
    proc = run_cli(*_prepare(tmp_path, str(_corpus(tmp_path, "odd.txt", blob))))
    assert "1 lines over 1 MiB" in proc.stdout and "1 lines had bad UTF-8 (replaced)" in proc.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["long_lines_skipped"] == 1 and manifest["lines_with_bad_utf8"] == 1


def test_empty_classification_texts_are_a_counted_skip(tmp_path, ctx):
    from conftest import write_order_task

    write_order_task(tmp_path / "t.jsonl", 120, 0)
    with open(tmp_path / "t.jsonl", "a") as f:
        f.write(json.dumps({"text": "   ", "label": "cat_first"}) + "\n")
    run_cli(*_finetune(tmp_path, ctx, tmp_path / "t.jsonl"))
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["skipped"] and "empty" in json.dumps(summary["skipped"])
