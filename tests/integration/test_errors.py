"""Bad input gives one clear error line naming the file, line or key, exit status 2, and no
output that looks complete; odd but usable input is counted and skipped."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_OVERRIDES, run_cli, write_grammar_corpus


def one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("elmo-dist: error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_missing_corpus_file_is_named(tmp_path):
    err = one_error_line(run_cli("prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "p"), check=False))
    assert "nope.txt" in err and "not found" in err
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_glob_matching_nothing_is_named(tmp_path):
    err = one_error_line(run_cli("prepare", str(tmp_path / "*.txt"), "--out", str(tmp_path / "p"), check=False))
    assert "*.txt" in err and "no file matches" in err


def test_corpus_without_tokens_is_an_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    err = one_error_line(run_cli("prepare", str(tmp_path / "blank.txt"), "--out", str(tmp_path / "p"), check=False))
    assert "blank.txt" in err and "no tokens" in err
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_failed_prepare_removes_the_old_manifest(tmp_path):
    write_grammar_corpus(tmp_path / "good.txt", 200)
    run_cli("prepare", str(tmp_path / "good.txt"), "--out", str(tmp_path / "p"))
    assert (tmp_path / "p" / "manifest.json").exists()
    data = gzip.compress(b"some words here\n" * 5000)
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])  # a truncated gzip
    err = one_error_line(run_cli("prepare", str(tmp_path / "good.txt"), str(tmp_path / "cut.txt.gz"),
                                 "--out", str(tmp_path / "p"), check=False))
    assert "cut.txt.gz" in err
    assert not (tmp_path / "p" / "manifest.json").exists()  # nothing claims the directory is complete


def test_odd_lines_are_counted_not_fatal(tmp_path):
    long_word = "x" * 70
    raw = b"good words here\n\n\nbad \xff\xfe bytes here\n" + f"a {long_word} b\n".encode() + b"more good words\n" * 50
    (tmp_path / "c.txt").write_bytes(raw)
    with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
        f.write("gzip words too\n" * 10)
    proc = run_cli("prepare", str(tmp_path / "c.txt"), str(tmp_path / "d.txt.gz"), "--out", str(tmp_path / "p"),
                   "--heldout-fraction", "0")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["empty_lines_skipped"] == 2
    assert m["lines_with_bad_utf8"] == 1
    assert m["train_tokens_over_48_bytes"] == 1
    assert m["splits"]["train"]["sentences"] == 1 + 1 + 1 + 50 + 10
    assert "tokens/s" in proc.stdout
    vocab = (tmp_path / "p" / "vocab.txt").read_text().splitlines()
    assert "\ufffd\ufffd" in vocab and "gzip" in vocab


def test_typo_in_config_key_names_the_closest_key(tmp_path):
    err = one_error_line(run_cli("pretrain", str(REPO / "configs/debug.yaml"), "train.max_step=5",
                                 f"train.run_dir={tmp_path / 'r'}", check=False))
    assert "'train.max_step'" in err and "did you mean 'train.max_steps'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command,config,typo", [("pretrain", "configs/debug.yaml", "train.max_step=5"),
                                                  ("finetune", "configs/finetune.yaml", "optim.lrr=0.1")])
def test_a_config_error_comes_before_torch_is_loaded(command, config, typo):
    """A typo is reported at once: the command reads its config before importing torch (and, for
    finetune, scikit-learn), which would take seconds first."""
    code = ("import sys\nfrom elmo_dist.cli import main\n"
            f"status = main([{command!r}, {str(REPO / config)!r}, {typo!r}])\n"
            "print(status, 'torch' in sys.modules, 'sklearn' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert f"unknown config key '{typo.split('=')[0]}'" in proc.stderr


def test_typo_in_yaml_file_names_the_file_and_key(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  lstm_dimm: 64\n")
    err = one_error_line(run_cli("pretrain", str(tmp_path / "c.yaml"), check=False))
    assert "c.yaml" in err and "model.lstm_dimm" in err and "model.lstm_dim" in err


def test_wrong_type_and_bad_values_name_the_key(tmp_path):
    cfg = str(REPO / "configs/debug.yaml")
    err = one_error_line(run_cli("pretrain", cfg, "train.max_steps=lots", check=False))
    assert "train.max_steps" in err
    err = one_error_line(run_cli("pretrain", cfg, "data.unroll_steps=0", check=False))
    assert "data.unroll_steps" in err and "positive" in err
    err = one_error_line(run_cli("pretrain", cfg, "model.flavour=huge", check=False))
    assert "model.flavour" in err and "huge" in err


def test_pretrain_on_an_unprepared_directory(tmp_path):
    (tmp_path / "d").mkdir()
    err = one_error_line(run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={tmp_path / 'd'}",
                                 f"train.run_dir={tmp_path / 'r'}", *TINY_OVERRIDES, check=False))
    assert str(tmp_path / "d") in err and "manifest.json" in err


def test_evaluate_a_missing_run(tmp_path):
    err = one_error_line(run_cli("evaluate", str(tmp_path / "nothing"), check=False))
    assert "nothing" in err


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "p"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_explains_every_command():
    top = run_cli("--help").stdout
    for cmd in ("prepare", "pretrain", "evaluate"):
        assert cmd in top
        assert "usage: elmo-dist " + cmd in run_cli(cmd, "--help").stdout
