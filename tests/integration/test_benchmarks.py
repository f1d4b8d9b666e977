"""Smoke tests of the benchmark scripts: each runs for a step or two on tiny sizes and writes its
JSON with sane fields. No timing is asserted; the figures come from running the scripts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow(seconds=132)  # its serial seconds: conftest starts the slowest first


def bench(name: str, *args: str, out) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


TINY = ["--flavour", "debug", "--batch-size", "4", "--unroll", "5", "--steps", "1", "--warmup", "1",
        "--corpus-tokens", "20000", "--vocab", "2000", "--gemm-seconds", "0.1"]


def test_bench_pretrain_with_the_naive_baseline(tmp_path):
    res = bench("bench_pretrain", *TINY, "--compare-naive", out=tmp_path / "p.json")
    for key in ("tokens_per_s", "tokens_per_s_with_data", "ms_per_step", "data_ms_per_batch", "flops_per_token",
                "gemm_gflops", "mfu", "naive_tokens_per_s", "speedup_vs_naive", "peak_memory_mib"):
        assert res[key] > 0, key
    # the naive baseline encodes every position twice (once per direction) at full width
    assert res["naive_flops_per_token"] > res["flops_per_token"]


def test_bench_pretrain_compares_the_clipped_cells(tmp_path):
    res = bench("bench_pretrain", *TINY, "--compare-clip", "3", out=tmp_path / "p.json")
    for key in ("unclipped_ms_per_step", "clipped_ms_per_step", "clipped_reference_ms_per_step", "clip_cost"):
        assert res[key] > 0, key


def test_bench_pretrain_without_the_distinct_token_path(tmp_path):
    res = bench("bench_pretrain", *TINY, "--no-dedup", out=tmp_path / "p.json")
    # every position of both directions through the char CNN, at the full 50 characters
    assert res["distinct_tokens_per_position"] == 2.0 and res["char_columns"] == 50 and not res["dedup"]
    assert res["tokens_per_s"] > 0


def test_bench_prepare_two_sizes_and_every_format(tmp_path):
    res = bench("bench_prepare", "--tokens", "20000", "40000", "--vocab", "3000", "--workers", "1", "2",
                out=tmp_path / "p.json")
    assert [r["tokens"] for r in res["runs"]] == [20000, 40000]
    runs = res["runs"] + res["matrix"]
    assert all(r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in runs)
    # the measuring process runs prepare alone: torch (about 190 MiB) is never imported into it
    assert all(r["peak_rss_mib"] < 150 for r in runs)
    # the same documents in every format: the same tokens
    assert [(r["format"], r["workers"], r["tokens"]) for r in res["matrix"]] == [
        (f, w, 40000) for f in ("text", "jsonl", "parquet") for w in (1, 2)]


def test_bench_dist_one_vs_two_processes(tmp_path):
    res = bench("bench_dist", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--corpus-tokens", "20000",
                "--vocab", "2000", "--port", "29563", out=tmp_path / "d.json")
    assert res["one_process"]["ms_per_step"] > 0 and res["two_processes"]["ms_per_step"] > 0


def test_bench_finetune_two_sizes(tmp_path):
    res = bench("bench_finetune", "--docs", "300", "600", out=tmp_path / "f.json")
    runs = res["runs"]
    assert [r["docs"] for r in runs] == [300, 600]
    for r in runs:
        assert r["cache_docs_per_s"] > 0 and r["epoch_docs_per_s"] > 0
        assert 0 < r["rss_anon_start_mib"] <= r["rss_anon_peak_mib"]
        # the cache is ragged float16: (L+1) x 2*projection_dim x 2 bytes per token of the demo's biLM
        assert r["cache_mib"] * 2**20 == r["tokens"] * 3 * 128 * 2


def test_gpu_check_runs_on_the_cpu(tmp_path):
    """Issue 16: the GPU script's every step, on the CPU with tiny sizes, so that no device minute is
    lost to a typo in it. Its results come back in the few files a lent machine returns."""
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--device", "cpu"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "logs.tar.gz"]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["passed"] and res["complete"] and res["tests"]["passed"] and "7 passed" in res["tests"]["summary"]
    assert set(res["pretraining"]) == {"bf16", "zero2_bf16"} and all(r["val_ppl"] for r in res["pretraining"].values())
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in res["throughput"].values())
    assert [r["batch"] for r in res["throughput"].values()] == [8, 8, 8]
    headline = res["throughput"]["debug bf16, clipped"]["profile"]  # where the headline row's time goes
    assert 0 < headline["busy_ms_per_step"] and headline["top"][0]["ms_per_step"] > 0
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {"logs/tests.log", "logs/prepare.log", "logs/bench0_debug_bf16_8.profile.txt"} <= set(names)
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: passed")


def test_bench_dropout_times_both_samplers_on_each_thread_count(tmp_path):
    res = bench("bench_dropout", "--shape", "4", "50", "16", "--threads", "1", "2", "--repeats", "2",
                out=tmp_path / "d.json")
    assert res["shape"] == [4, 50, 16] and set(res["by_threads"]) == {"1", "2"}
    for figures in res["by_threads"].values():
        assert set(figures) == {"torch.nn.Dropout", "elmo_dist Dropout"}
        assert all(f["forward_ms"] > 0 and f["forward_backward_ms"] > 0 for f in figures.values())
