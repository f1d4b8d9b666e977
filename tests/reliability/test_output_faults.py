"""Faults real users reported (issue 28) in what commands write and resume, each met as a user meets
it, through the CLI: output over input, a finished run run again, a full disk, a read-only run,
HDF5 output paths, another window length on resume, a checkpoint rotated away under a reader, and
three misleading messages.

A full disk is a real tmpfs of a few MiB and a read-only run a real read-only bind mount: both need
root (CI runs as root); elsewhere those tests skip and say why.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import pytest
import torch

from elmo_dist import runs

from conftest import REPO, one_error_line, pretrain_args, run_cli, write_grammar_corpus, write_order_task

pytestmark = pytest.mark.slow(seconds=219)  # its serial seconds: conftest starts the slowest first


def snapshot(root: Path) -> dict:
    """Every file under `root` (the run-directory lock aside): its bytes and inode, so that a file
    rewritten with the same content still shows."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _mount(args: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs or a read-only bind mount needs root (CI runs as root)")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not allowed here: {proc.stderr.strip()}")


@contextmanager
def small_disk(path: Path, size: str, *options: str):
    """A tmpfs of `size` (e.g. '16m') mounted at `path` for the block's duration."""
    path.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def read_only(src: Path, at: Path):
    """`src` seen read-only at `at` (a bind mount), as a shared model directory or a finished run
    on a read-only file system is."""
    at.mkdir(parents=True, exist_ok=True)
    _mount(["--bind", str(src), str(at)])
    try:
        _mount(["-o", "remount,bind,ro", str(at)])
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes of `disk` free."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(free - leave, 0))
    return filler


@pytest.fixture
def sentences(tmp_path) -> Path:
    f = tmp_path / "in.txt"
    f.write_text("the cat sees the fish .\na dog likes the river today .\n")
    return f


# 1. output over input ----------------------------------------------------------------------------
def test_embed_never_writes_over_its_input_however_it_is_spelled(tmp_path, tiny_bilm, sentences):
    text = sentences.read_bytes()
    (tmp_path / "link.txt").symlink_to(sentences)
    os.link(sentences, tmp_path / "hard.txt")
    for out in (Path(f"{tmp_path}/../{tmp_path.name}/in.txt"), tmp_path / "link.txt", tmp_path / "hard.txt"):
        line = one_error_line(run_cli("embed", str(tiny_bilm), str(sentences), str(out), "--device", "cpu",
                                      check=False))
        assert "is also an input of `elmo-dist embed`" in line
        assert sentences.read_bytes() == text
    # nor over a file of the run it reads
    vocab = (tiny_bilm / "vocab.txt").read_bytes()
    line = one_error_line(run_cli("embed", str(tiny_bilm), str(sentences), str(tiny_bilm / "vocab.txt"), check=False))
    assert "vocab.txt" in line and (tiny_bilm / "vocab.txt").read_bytes() == vocab


def test_evaluate_export_and_interop_never_write_over_what_they_read(tmp_path, tiny_bilm, grammar_corpus):
    before = snapshot(tiny_bilm)
    latest = runs.find_latest(tiny_bilm)
    for args in (["evaluate", str(tiny_bilm), "--out", str(tiny_bilm)],  # its config.yaml and summary.json
                 ["evaluate", str(tiny_bilm), "--out", str(grammar_corpus)],
                 ["export", str(tiny_bilm), "--out", str(latest)],
                 ["export", str(tiny_bilm), "--out", str(tiny_bilm)],
                 ["export-elmo", str(tiny_bilm), str(tiny_bilm)]):
        line = one_error_line(run_cli(*args, check=False))
        assert "elmo-dist" in line and ("input" in line or "exported from" in line), line
    assert snapshot(tiny_bilm) == before
    # import-elmo with its vocabulary inside its output directory
    run_cli("export-elmo", str(tiny_bilm), str(tmp_path / "elmo"))
    vocab = (tmp_path / "elmo" / "vocab.txt").read_bytes()
    line = one_error_line(run_cli("import-elmo", str(tmp_path / "elmo" / "options.json"),
                                  str(tmp_path / "elmo" / "weights.hdf5"), str(tmp_path / "elmo"),
                                  "--vocab", str(tmp_path / "elmo" / "vocab.txt"), check=False))
    assert "vocab.txt" in line and (tmp_path / "elmo" / "vocab.txt").read_bytes() == vocab


def test_prepare_never_writes_over_or_deletes_its_input(tmp_path):
    out = tmp_path / "prepared"
    (out / "train").mkdir(parents=True)
    write_grammar_corpus(out / "vocab.txt", 200)  # a user's text where prepare writes its vocabulary
    write_grammar_corpus(out / "train" / "shard-00000.npy", 200)  # ... and where it deletes old shards
    for name in ("vocab.txt", "train/shard-00000.npy"):
        text = (out / name).read_bytes()
        line = one_error_line(run_cli("prepare", str(out / name), "--out", str(out), check=False))
        assert f"{out / name}: is also an input of `elmo-dist prepare`" in line
        assert (out / name).read_bytes() == text and not (out / "manifest.json").exists()


def test_finetune_into_the_bilm_run_directory_is_refused(tmp_path, tiny_bilm):
    data = write_order_task(tmp_path / "task.jsonl", 60, seed=0)
    before = snapshot(tiny_bilm)
    line = one_error_line(run_cli("finetune", str(REPO / "configs/finetune.yaml"), f"bilm.path={tiny_bilm}",
                                  f"data.train={data}", f"train.run_dir={tiny_bilm}", "variants=[frozen]",
                                  "train.device=cpu", check=False))
    assert "config.yaml: is also an input of `elmo-dist finetune`" in line
    assert {k: v for k, v in snapshot(tiny_bilm).items() if not k.startswith("layer_cache")} == \
        {k: v for k, v in before.items() if not k.startswith("layer_cache")}


def test_pretraining_into_the_prepared_corpus_is_refused(grammar_corpus):
    before = snapshot(grammar_corpus)
    line = one_error_line(run_cli(*pretrain_args(grammar_corpus, grammar_corpus, "train.max_steps=2"), check=False))
    assert "train.run_dir is data.dir" in line
    assert snapshot(grammar_corpus) == before


# 2. a finished run run again ---------------------------------------------------------------------
def test_a_finished_run_run_again_changes_nothing_and_can_still_be_extended(tmp_path, grammar_corpus):
    run = tmp_path / "run"
    args = pretrain_args(run, grammar_corpus, "train.max_steps=6", "checkpoint.every=3")
    run_cli(*args)
    before = snapshot(run)
    again = run_cli(*args)
    assert "already finished at step 6" in again.stdout and "held-out perplexity" in again.stdout
    assert snapshot(run) == before  # the final checkpoint's inodes, summary.json, tensorboard, config
    # killed between its final checkpoint and its summary: evaluated and summarised, not saved again
    (run / "summary.json").unlink()
    final = run / "checkpoints" / "step-6"
    inodes = {p.name: p.stat().st_ino for p in final.iterdir()}
    run_cli(*args)
    assert {p.name: p.stat().st_ino for p in final.iterdir()} == inodes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 6 and summary["val_ppl"] > 1
    # a larger train.max_steps extends it
    run_cli(*pretrain_args(run, grammar_corpus, "train.max_steps=9", "checkpoint.every=3"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["finished"] and summary["tokens_per_s"] > 0
    assert runs.find_latest(run).name == "step-9"


# 3. a full disk ------------------------------------------------------------------------------------
def test_pretrain_on_a_full_disk_says_so_and_resumes_once_there_is_room(tmp_path, grammar_corpus):
    with small_disk(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        args = pretrain_args(run, grammar_corpus, "train.max_steps=6", "checkpoint.every=3")
        run_cli(*args, "--stop-at-step", "3")
        filler = fill(disk, leave=64 << 10)
        line = one_error_line(run_cli(*args, check=False))
        assert f"{run / 'checkpoints'}: not enough disk space for the checkpoint of step 6" in line
        assert "it needs about" in line and "free" in line and "step-3 and older checkpoints are intact" in line
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]  # no temporary left
        assert runs.verify(run / "checkpoints" / "step-3") is None
        assert json.loads((run / "summary.json").read_text())["steps"] == 3  # the stopped run's, not a new one
        filler.unlink()
        run_cli(*args)
        assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_disk_that_fills_while_a_checkpoint_is_written(tmp_path, grammar_corpus):
    """The room is there but the file system runs out of inodes half-way through the checkpoint's
    files: torch's writer reports that as `unexpected pos`, with no word of space."""
    with small_disk(tmp_path / "disk", "16m", "nr_inodes=400") as disk:
        run = disk / "run"
        args = pretrain_args(run, grammar_corpus, "train.max_steps=6", "checkpoint.every=3",
                             "logging.tensorboard=false")
        run_cli(*args, "--stop-at-step", "3")
        (disk / "inodes").mkdir()
        n = 0
        try:
            while True:
                (disk / "inodes" / str(n)).touch()
                n += 1
        except OSError:
            pass
        for i in range(3):  # room for the temporary directory and two of the checkpoint's files
            (disk / "inodes" / str(n - 1 - i)).unlink()
        line = one_error_line(run_cli(*args, check=False))
        assert "the disk filled up while writing the checkpoint of step 6" in line and "step-3" in line
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]


@pytest.mark.parametrize("size, says", [
    ("2m", "tokens' ids written); prepare needs about 8 bytes a corpus token until it ends"),
    ("5m", "not enough disk space for the token shards: it needs about 3.7 MiB"),
], ids=["while counting", "before the shards"])
def test_prepare_on_a_full_disk_says_so_and_leaves_nothing_that_looks_complete(tmp_path, size, says):
    """The first pass writes 4 bytes of scratch id a token, the second 4 more of shards; numpy's
    writer said only '80255 requested and 51200 written'."""
    corpus = write_grammar_corpus(tmp_path / "corpus.txt", 100_000)  # 0.92M tokens with the sentence markers
    with small_disk(tmp_path / "disk", size) as disk:
        line = one_error_line(run_cli("prepare", str(corpus), "--out", str(disk / "p"), check=False))
        assert line.startswith(f"elmo-dist: error: {disk / 'p'}: ") and says in line, line
        left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())
        assert left == [], left  # no scratch ids, no shards, no manifest


def test_embed_on_a_full_disk_refuses_before_the_work(tmp_path, tiny_bilm):
    text = tmp_path / "many.txt"
    text.write_text("the old man finds a red ball in the morning .\n" * 3000)  # ~24 MiB of float32 layers
    with small_disk(tmp_path / "disk", "16m") as disk:
        proc = run_cli("embed", str(tiny_bilm), str(text), str(disk / "out.hdf5"), "--device", "cpu", check=False)
        line = one_error_line(proc)
        assert f"{disk}: not enough disk space for the embeddings: it needs about" in line and "MiB free" in line
        assert list(disk.iterdir()) == []


HDF5_FILLS_UP = """
import sys, numpy as np
from elmo_dist.errors import DiskFull
from elmo_dist.files import atomic_hdf5
try:
    with atomic_hdf5(sys.argv[1], 0, "the test file") as h5:
        for i in range(10000):
            h5.file.create_dataset(str(i), data=np.ones((3, 20, 64), np.float32))
            if h5.failed:
                break
except DiskFull as e:
    print("DiskFull:", e)
"""


def test_hdf5_output_that_fills_the_disk_midway_is_one_error_not_a_crash(tmp_path):
    """libhdf5 segfaulted on close after a failed write (rc 139, hundreds of tracebacks): it must
    never see one. A real 1 MiB tmpfs, and more data than fits."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        proc = subprocess.run([sys.executable, "-c", HDF5_FILLS_UP, str(disk / "x.hdf5")], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "DiskFull: " in proc.stdout
        assert "the disk is full while writing the test file" in proc.stdout
        assert list(disk.iterdir()) == []  # the temporary file is gone


def test_export_and_export_elmo_on_a_full_disk(tmp_path, tiny_bilm):
    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk, leave=32 << 10)
        for args in (["export", str(tiny_bilm), "--out", str(disk / "x")],
                     ["export-elmo", str(tiny_bilm), str(disk / "e")]):
            line = one_error_line(run_cli(*args, check=False))
            assert "disk" in line and "needs about" in line, line
        leftovers = [p.name for p in disk.rglob("*") if p.is_file() and p.name != "filler"]
        assert leftovers == [], leftovers


# 4. a read-only run --------------------------------------------------------------------------------
def test_a_read_only_run_can_be_evaluated_and_embedded_and_refuses_writes_in_one_line(tmp_path, tiny_bilm, sentences):
    with read_only(tiny_bilm, tmp_path / "ro") as ro:
        proc = run_cli("evaluate", str(ro), "data.max_eval_tokens=500", cwd=tmp_path, check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        fallback = tmp_path / "eval" / "ro" / runs.find_latest(ro).name / "summary.json"
        assert "elmo-dist: warning:" in proc.stderr and "eval/ro/" in proc.stderr
        assert json.loads(fallback.read_text())["val_ppl"] > 1
        run_cli("embed", str(ro), str(sentences), str(tmp_path / "e.hdf5"), "--device", "cpu")
        with h5py.File(tmp_path / "e.hdf5") as f:
            assert f["0"].shape == (3, 6, 64)
        for args in (["export", str(ro)], pretrain_args(ro, Path(json.loads((ro / "corpus.json").read_text())[
                "data_dir"]), "train.max_steps=200")):
            line = one_error_line(run_cli(*args, check=False))
            assert "Read-only file system" in line and str(ro) in line, line


# 5. HDF5 output paths ------------------------------------------------------------------------------
def test_embed_checks_its_output_path_before_the_work(tmp_path, tiny_bilm, sentences):
    line = one_error_line(run_cli("embed", str(tiny_bilm), str(sentences), str(tmp_path / "nope" / "out.hdf5"),
                                  check=False))
    assert f"{tmp_path / 'nope'} does not exist" in line
    (tmp_path / "adir").mkdir()
    line = one_error_line(run_cli("embed", str(tiny_bilm), str(sentences), str(tmp_path / "adir"), check=False))
    assert "is a directory" in line
    assert not (tmp_path / "adir.tmp").exists() and list((tmp_path / "adir").iterdir()) == []


# 6. another window length on resume ----------------------------------------------------------------
def test_resuming_with_another_unroll_steps_keeps_the_position_in_tokens(tmp_path, grammar_corpus):
    """Each lane had read 4 windows of 10 tokens; with 20-token windows it must go on from token 40
    (window 2), not from window 4 (token 80, skipping text) — nor, the other way, read text twice."""
    run = tmp_path / "run"
    run_cli(*pretrain_args(run, grammar_corpus, "train.max_steps=4", "checkpoint.every=4"))
    proc = run_cli(*pretrain_args(run, grammar_corpus, "train.max_steps=5", "data.unroll_steps=20"))
    state = json.loads((run / "checkpoints" / "step-5" / "trainer_state.json").read_text())["data"]
    assert state["unroll_steps"] == 20 and (state["step"] - 1) * 20 == 40  # one step after the mapped position
    assert "x 10-token windows on 1 x 16 x 20: it had read 40 tokens of each lane" in proc.stderr
    proc = run_cli(*pretrain_args(run, grammar_corpus, "train.max_steps=6", "data.unroll_steps=5"))
    state = json.loads((run / "checkpoints" / "step-6" / "trainer_state.json").read_text())["data"]
    assert (state["step"] - 1) * 5 == 60  # 3 windows of 20 tokens read; continues at token 60


# 7. a checkpoint rotated away while it is read -----------------------------------------------------
def test_a_reader_keeps_the_checkpoint_it_resolved_when_it_is_rotated_away(tmp_path, tiny_bilm):
    run = tmp_path / "run"
    shutil.copytree(tiny_bilm, run)
    latest = runs.find_latest(run)
    saved = runs.open_run(run)
    shutil.rmtree(latest)  # what checkpoint.keep_last does once a newer checkpoint is committed
    model = saved.build_model("cpu")
    assert saved.path == latest and torch.isfinite(next(model.parameters())).all()
    assert runs.find_latest(run) != latest


def test_embed_and_evaluate_while_a_run_rotates_its_checkpoints(tmp_path, grammar_corpus, sentences):
    """keep_last=1 and a checkpoint every step: each save removes the checkpoint a reader may be
    reading. 9 of 16 embeds failed with 'not a safetensors weight file (No such file ...)' before
    readers pinned their checkpoint (5 of 6 here)."""
    run = tmp_path / "run"
    run_cli(*pretrain_args(run, grammar_corpus, "train.max_steps=2", "checkpoint.every=1"))
    cmd = [sys.executable, "-m", "elmo_dist", *pretrain_args(run, grammar_corpus, "train.max_steps=100000",
                                                             "checkpoint.every=1", "checkpoint.keep_last=1")]
    trainer = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        failures = []
        for i in range(4):
            args = (["embed", str(run), str(sentences), str(tmp_path / f"e{i}.hdf5")] if i % 2 == 0 else
                    ["evaluate", str(run), "data.max_eval_tokens=200", "--out", str(tmp_path / f"v{i}")])
            proc = run_cli(*args, check=False)
            if proc.returncode != 0:
                failures.append(proc.stderr.strip().splitlines()[-1])
        assert trainer.poll() is None  # it was rotating all along
        assert failures == []
    finally:
        os.killpg(trainer.pid, 9)
        trainer.wait(30)


# 8. misleading messages ----------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_embed_device_cuda_without_cuda_names_the_flag(tiny_bilm, sentences, tmp_path):
    line = one_error_line(run_cli("embed", str(tiny_bilm), str(sentences), str(tmp_path / "e.hdf5"),
                                  "--device", "cuda", check=False))
    assert "--device is cuda, but no CUDA device is available" in line and "train.device" not in line


def test_a_vocabulary_that_does_not_match_the_weights_is_named(tmp_path, tiny_bilm, sentences):
    run_cli("export", str(tiny_bilm), "--out", str(tmp_path / "x"))
    vocab = (tmp_path / "x" / "vocab.txt").read_text().splitlines()
    (tmp_path / "x" / "vocab.txt").write_text("\n".join(vocab[:-5]) + "\n")  # another corpus's vocabulary
    (tmp_path / "x" / "vocab.counts.npy").unlink()
    line = one_error_line(run_cli("embed", str(tmp_path / "x"), str(sentences), str(tmp_path / "e.hdf5"),
                                  check=False))
    assert f"{tmp_path / 'x' / 'vocab.txt'}: {len(vocab) - 5} words, but the softmax" in line
    assert "does not belong to these weights" in line


def test_evaluate_refuses_overrides_that_change_the_model(tmp_path, tiny_bilm):
    for override, key in (("model.flavour=small", "model.flavour: debug -> small"),
                          ("model.lstm_dim=128", "model.lstm_dim: 64 -> 128"),
                          ("model.cell_clip=3", "model.cell_clip: None -> 3")):
        line = one_error_line(run_cli("evaluate", str(tiny_bilm), override, "--out", str(tmp_path / "e"),
                                      check=False))
        assert "evaluate takes the model from the checkpoint" in line and key in line, line
    assert not (tmp_path / "e" / "summary.json").exists()
