"""The CUDA path in one run: correctness checks, a real pretraining run, ZeRO-2, throughput.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (≤ 8 minutes on one H100/H200)
    bash benchmarks/gpu_check.sh --device cpu    # the same steps on the CPU with tiny sizes (make test)

Writes JSON under $OUT (default: a temporary directory; the path is printed) and prints a short
table last. Each part runs in its own process with a time limit, so one failure (an OOM, a hang)
costs its own minutes only and the others still report:
1. `tests/gpu/` with ELMO_DIST_CHECK_DEVICE set: autocast against fp32, the clipped cell and the
   sampled softmax on the device against the CPU, fp16 skipped steps, a stop + resume.
2. `elmo-dist pretrain` in bf16 through the CLI (stopped, resumed, evaluated), and the same with
   DeepSpeed ZeRO-2 on one process.
3. `bench_pretrain`: small fp32 and bf16, medium bf16, original bf16 at the largest batch that fits
   (tokens/s, MFU against the matrix-multiply rate measured on the device, peak memory).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# (name, flavour, precision, batch sizes to try, largest first; the first that runs is kept)
BENCH_CUDA = [("small fp32", "small", "fp32", [128]), ("small bf16", "small", "bf16", [128]),
              ("medium bf16", "medium", "bf16", [256]), ("original bf16", "original", "bf16", [512, 384, 256, 128])]
BENCH_CPU = [("debug fp32", "debug", "fp32", [8]), ("debug bf16", "debug", "bf16", [8])]
TINY = ["model.lstm_dim=64", "model.projection_dim=32", "model.filters=[[1,8],[2,8],[3,16]]",
        "model.n_negative_samples=16", "data.batch_size=16", "data.unroll_steps=10", "data.eval_batch_size=32",
        "data.max_eval_tokens=2000", "logging.log_every=10"]


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[bool, float]:
    """Run `cmd` with output to `log`; (succeeded, seconds). A timeout is a failure, not a hang."""
    t0 = time.time()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            out.write(f"\ngpu_check: timed out after {timeout:.0f} s\n")
            ok = False
    return ok, time.time() - t0


def correctness(device: str, out: Path) -> dict:
    ok, s = run([PY, "-m", "pytest", "tests/gpu", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                 f"--junitxml={out / 'tests.xml'}"], out / "tests.log", 240, {"ELMO_DIST_CHECK_DEVICE": device})
    last = (out / "tests.log").read_text().strip().splitlines()[-1:]
    return {"passed": ok, "seconds": round(s, 1), "summary": last[0] if last else ""}


def pretraining(device: str, out: Path, work: Path) -> dict:
    """prepare -> pretrain (stopped halfway) -> resume -> evaluate, in bf16; then ZeRO-2 bf16."""
    from benchmarks.common import write_zipf_corpus

    text = write_zipf_corpus(work / "corpus.txt", 200_000 if device == "cuda" else 30_000, 5000)
    cli = [PY, "-m", "elmo_dist"]
    res: dict = {}
    ok, _ = run([*cli, "prepare", str(text), "--out", str(work / "prepared")], out / "prepare.log", 120)
    size = [] if device == "cuda" else TINY
    for name, extra in (("bf16", []), ("zero2_bf16", ["dist.zero_stage=2"])):
        run_dir = work / name
        args = [*cli, "pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={work / 'prepared'}",
                f"train.run_dir={run_dir}", *size, f"train.device={device}", "dist.mixed_precision=bf16",
                "train.max_steps=40", "checkpoint.every=20", "train.eval_every=0", *extra]
        t0, steps_ok = time.time(), ok
        for i, stop in enumerate((["--stop-at-step", "20"], [])):
            steps_ok = steps_ok and run([*args, *stop], out / f"pretrain_{name}_{i}.log", 240)[0]
        steps_ok = steps_ok and run([*cli, "evaluate", str(run_dir), "--out", str(work / f"eval_{name}")],
                                    out / f"evaluate_{name}.log", 120)[0]
        summary = work / f"eval_{name}" / "summary.json"
        ppl = json.loads(summary.read_text())["val_ppl"] if steps_ok and summary.exists() else None
        res[name] = {"passed": bool(steps_ok and ppl and ppl < 1e6), "val_ppl": ppl,
                     "seconds": round(time.time() - t0, 1)}
    return res


def throughput(device: str, out: Path) -> dict:
    res = {}
    for name, flavour, precision, batches in (BENCH_CUDA if device == "cuda" else BENCH_CPU):
        for batch in batches:
            path = out / f"bench_{flavour}_{precision}_{batch}.json"
            extra = [] if device == "cuda" else ["--unroll", "5", "--corpus-tokens", "20000", "--vocab", "2000",
                                                 "--steps", "1", "--warmup", "1", "--gemm-seconds", "0.1"]
            ok, s = run([PY, "-m", "benchmarks.bench_pretrain", "--flavour", flavour, "--precision", precision,
                         "--device", device, "--batch-size", str(batch), "--out", str(path), *extra],
                        out / f"bench_{flavour}_{precision}_{batch}.log", 180)
            if ok:
                b = json.loads(path.read_text())
                res[name] = {"batch": batch, "tokens_per_s": b["tokens_per_s"], "mfu": b["mfu"],
                             "peak_memory_mib": b["peak_memory_mib"], "ms_per_step": b["ms_per_step"],
                             "seconds": round(s, 1)}
                break
            path.unlink(missing_ok=True)  # most likely out of memory: try the next batch size
        else:
            res[name] = {"batch": None, "failed": True}
    return res


def table(res: dict) -> str:
    rows = [("device", res["device"]), ("correctness tests", f"{'pass' if res['tests']['passed'] else 'FAIL'}"
                                                              f" ({res['tests']['summary']})")]
    for name, r in res["pretraining"].items():
        rows.append((f"pretrain {name}", f"{'pass' if r['passed'] else 'FAIL'} (val_ppl {r['val_ppl']})"))
    for name, r in res["throughput"].items():
        rows.append((f"bench {name}", "FAIL" if r.get("failed") else
                     f"batch {r['batch']}: {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu'] or 0:.1%}, "
                     f"peak {r['peak_memory_mib']:,.0f} MiB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: device {args.device}; logs and JSON in {out}", flush=True)
    t0 = time.time()
    res: dict = {"device": args.device, "date": time.strftime("%Y-%m-%d")}
    if args.device == "cuda":
        import torch

        res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (not available)"
    res["tests"] = correctness(args.device, out)
    with tempfile.TemporaryDirectory() as work:
        res["pretraining"] = pretraining(args.device, out, Path(work))
    res["throughput"] = throughput(args.device, out)
    res["seconds"] = round(time.time() - t0, 1)
    res["passed"] = res["tests"]["passed"] and all(r["passed"] for r in res["pretraining"].values()) \
        and not any(r.get("failed") for r in res["throughput"].values())
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    print(table(res), flush=True)
    print(f"gpu_check: {'passed' if res['passed'] else 'FAILED'} in {res['seconds']:.0f} s; {out / 'gpu_check.json'}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
