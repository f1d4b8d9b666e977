"""The CUDA path in one run: correctness checks, throughput, a real pretraining run, ZeRO-2.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (≤ 8 minutes on one H100/H200)
    bash benchmarks/gpu_check.sh --device cpu    # the same steps on the CPU with tiny sizes (make test)

Each part runs in its own process with a time limit, inside an overall budget (`--budget`, 500 s),
so one failure (an OOM, a hang) costs its own minutes only, the others still report, and the
results come out before a lent machine's command limit. In this order:
1. `tests/gpu/` with ELMO_DIST_CHECK_DEVICE set: autocast against fp32 (nn.LSTM and the clipped
   cell), the clipped cell and the sampled softmax on the device against the CPU, fp16 skipped
   steps, a stop + resume.
2. `bench_pretrain`: `original` bf16 at the largest of 2048, 1024, 512 rows that runs (profiled:
   where its step's time goes), the same with the clipped cell's PyTorch ops instead of its Triton
   kernels, then small fp32 and bf16, medium bf16 (tokens/s, MFU against the matrix-multiply rate
   measured on the device, peak memory).
3. `elmo-dist pretrain` in bf16 through the CLI (stopped, resumed, evaluated), and the same with
   DeepSpeed ZeRO-2 on one process.

$OUT (default: a temporary directory; the path is printed) gets three files at most, since a lent
machine sends back only a few: `gpu_check.json` (every result, rewritten after each part, with
`"complete": false` until the end), `logs.tar.gz` (every part's log, the benchmarks' own JSON, the
profile table) and whatever the caller tees there. The tails of failed parts' logs are printed,
then a short table last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# (name, flavour, precision, batch sizes to try, largest first (the first that runs is kept; None:
# the headline's), run-config overrides). The first row is the headline (issue 16: `original` bf16
# at >= 400k tokens/s) and is profiled; the second times the same with the clipped cell's PyTorch ops.
BENCH_CUDA = [("original bf16", "original", "bf16", [2048, 1024, 512], []),
              ("original bf16, torch cell", "original", "bf16", None, ["model.clipped_cell=torch"]),
              ("small fp32", "small", "fp32", [128], []), ("small bf16", "small", "bf16", [128], []),
              ("medium bf16", "medium", "bf16", [256], [])]
CLIPPED = ["model.cell_clip=3", "model.proj_clip=3"]
BENCH_CPU = [("debug bf16, clipped", "debug", "bf16", [8], CLIPPED),
             ("debug bf16, clipped, torch cell", "debug", "bf16", None, [*CLIPPED, "model.clipped_cell=torch"]),
             ("debug fp32", "debug", "fp32", [8], [])]
BENCH_CPU_SIZES = ["--unroll", "5", "--corpus-tokens", "20000", "--vocab", "2000", "--steps", "1", "--warmup", "1",
                   "--gemm-seconds", "0.1"]
TINY = ["model.lstm_dim=64", "model.projection_dim=32", "model.filters=[[1,8],[2,8],[3,16]]",
        "model.n_negative_samples=16", "data.batch_size=16", "data.unroll_steps=10", "data.eval_batch_size=32",
        "data.max_eval_tokens=2000", "logging.log_every=10"]


class Check:
    """One gpu_check run: the device, where logs go, the deadline, and the results so far."""

    def __init__(self, device: str, out: Path, logs: Path, budget_s: float):
        self.device, self.out, self.logs, self.deadline = device, out, logs, time.time() + budget_s
        logs.mkdir()
        self.failed: list[Path] = []
        self.res: dict = {"device": device, "date": time.strftime("%Y-%m-%d"), "complete": False}

    def run(self, cmd: list[str], name: str, limit_s: float, env: dict | None = None) -> bool:
        """Run `cmd` with its output in logs/`name`.log, for at most `limit_s` and never past the
        deadline. A timeout is a failure, not a hang; a part with no time left is skipped (failed)."""
        log, left = self.logs / f"{name}.log", self.deadline - time.time()
        if left < 10:
            log.write_text("gpu_check: skipped, the time budget is spent\n")
            self.failed.append(log)
            return False
        with open(log, "w") as out:
            try:
                proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=min(limit_s, left),
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                out.write(f"\ngpu_check: timed out after {min(limit_s, left):.0f} s\n")
                ok = False
        if not ok:
            self.failed.append(log)
        return ok

    def record(self, part: str, result: dict) -> None:
        """Keep a part's results (so far) and save."""
        self.res[part] = result
        self.save()

    def save(self) -> None:
        """gpu_check.json and logs.tar.gz under $OUT, as they stand now."""
        (self.out / "gpu_check.json").write_text(json.dumps(self.res, indent=2))
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")


def correctness(check: Check) -> None:
    t0 = time.time()
    ok = check.run([PY, "-m", "pytest", "tests/gpu", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                    f"--junitxml={check.logs / 'tests.xml'}"], "tests", 200, {"ELMO_DIST_CHECK_DEVICE": check.device})
    last = (check.logs / "tests.log").read_text().strip().splitlines()[-1:]
    check.record("tests", {"passed": ok, "seconds": round(time.time() - t0, 1), "summary": last[0] if last else ""})


def throughput(check: Check) -> None:
    cuda, res, headline = check.device == "cuda", {}, None
    for i, (name, flavour, precision, batches, overrides) in enumerate(BENCH_CUDA if cuda else BENCH_CPU):
        for batch in batches or [headline]:
            tag = f"bench{i}_{flavour}_{precision}_{batch}"
            path, t0 = check.logs / f"{tag}.json", time.time()
            extra = ([] if cuda else BENCH_CPU_SIZES) + (["--set", *overrides] if overrides else []) + \
                (["--profile", str(check.logs / f"{tag}.profile.txt")] if i == 0 else [])
            if batch and check.run([PY, "-m", "benchmarks.bench_pretrain", "--flavour", flavour, "--precision",
                                    precision, "--device", check.device, "--batch-size", str(batch), "--out",
                                    str(path), *extra], tag, 180):
                res[name] = {**json.loads(path.read_text()), "batch": batch, "seconds": round(time.time() - t0, 1)}
                headline = headline or batch
                break
            path.unlink(missing_ok=True)  # most likely out of memory: try the next batch size
        else:
            res[name] = {"batch": None, "failed": True}
        check.record("throughput", res)


def pretraining(check: Check, work: Path) -> None:
    """prepare -> pretrain (stopped halfway) -> resume -> evaluate, in bf16; then ZeRO-2 bf16."""
    from benchmarks.common import write_zipf_corpus

    cuda = check.device == "cuda"
    text = write_zipf_corpus(work / "corpus.txt", 200_000 if cuda else 30_000, 5000)
    cli = [PY, "-m", "elmo_dist"]
    ok, res = check.run([*cli, "prepare", str(text), "--out", str(work / "prepared")], "prepare", 90), {}
    for name, extra in (("bf16", []), ("zero2_bf16", ["dist.zero_stage=2"])):
        run_dir, t0, steps_ok = work / name, time.time(), ok
        args = [*cli, "pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={work / 'prepared'}",
                f"train.run_dir={run_dir}", *([] if cuda else TINY), f"train.device={check.device}",
                "dist.mixed_precision=bf16", "train.max_steps=40", "checkpoint.every=20", "train.eval_every=0", *extra]
        for i, stop in enumerate((["--stop-at-step", "20"], [])):
            steps_ok = steps_ok and check.run([*args, *stop], f"pretrain_{name}_{i}", 150)
        steps_ok = steps_ok and check.run([*cli, "evaluate", str(run_dir), "--out", str(work / f"eval_{name}")],
                                          f"evaluate_{name}", 90)
        summary = work / f"eval_{name}" / "summary.json"
        ppl = json.loads(summary.read_text())["val_ppl"] if steps_ok and summary.exists() else None
        res[name] = {"passed": bool(steps_ok and ppl and ppl < 1e6), "val_ppl": ppl,
                     "seconds": round(time.time() - t0, 1)}
        check.record("pretraining", res)


def table(res: dict) -> str:
    tests = res["tests"]
    rows = [("device", res["device"]),
            ("correctness tests", f"{'pass' if tests['passed'] else 'FAIL'} ({tests['summary']})")]
    for name, r in res["throughput"].items():
        prof = r.get("profile", {})
        rows.append((f"bench {name}", "FAIL" if r.get("failed") else
                     f"batch {r['batch']}: {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu'] or 0:.1%}, "
                     f"peak {r['peak_memory_mib']:,.0f} MiB"
                     + (f", busy {prof['busy_ms_per_step']:.0f} of {prof['wall_ms_per_step']:.0f} ms/step"
                        if "busy_ms_per_step" in prof else "")))
    for name, r in res["pretraining"].items():
        rows.append((f"pretrain {name}", f"{'pass' if r['passed'] else 'FAIL'} (val_ppl {r['val_ppl']})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def print_failures(failed: list[Path], lines: int = 12) -> None:
    """The last lines of each failed part's log (at most four logs), so the reason shows in the
    output's tail even when only that comes back."""
    for log in failed[-4:]:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
        print(f"--- {log.name} (last {len(tail)} lines)", *(line[:200] for line in tail), sep="\n", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--budget", type=float, default=500, help="seconds for the whole check (default 500)")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: device {args.device}; JSON and logs in {out}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        check = Check(args.device, out, Path(work) / "logs", args.budget)
        if args.device == "cuda":
            import torch

            check.res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (unavailable)"
        correctness(check)
        throughput(check)
        (Path(work) / "pretrain").mkdir()
        pretraining(check, Path(work) / "pretrain")
        res = check.res
        res["passed"] = res["tests"]["passed"] and all(r["passed"] for r in res["pretraining"].values()) \
            and not any(r.get("failed") for r in res["throughput"].values())
        res.update(seconds=round(time.time() - t0, 1), complete=True)
        check.save()
        print_failures(check.failed)
    print(table(res), flush=True)
    print(f"gpu_check: {'passed' if res['passed'] else 'FAILED'} in {res['seconds']:.0f} s; {out / 'gpu_check.json'}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
