"""What every benchmark shares: the machine's measured GEMM rate, peak memory, known GPU peaks,
a generated Zipf corpus, and JSON + table output.

torch is imported inside the functions that use it, so that `bench_prepare`'s measuring process
(which never touches torch) reports the memory of `prepare` alone, not of torch's 190 MiB.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

# dense bf16 / fp32 peaks in TFLOP/s, from the vendors' data sheets (SXM parts)
KNOWN_GPUS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
              "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
              "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
              "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
              "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7}}


def gemm_gflops(device: str = "cpu", n: int = 1024, dtype=None, seconds: float = 1.0) -> float:
    """The measured matrix-multiply rate (GFLOP/s) of this device (fp32 unless `dtype`), the
    ceiling for MFU on a CPU."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    """CUDA max allocated, or this process's peak RSS."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_tflops(precision: str) -> tuple[float | None, str | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name()
    for key, peaks in KNOWN_GPUS.items():
        if key in name:
            return peaks["fp32" if precision == "fp32" else precision], name
    return None, name


def write_zipf_corpus(path: Path, n_tokens: int, vocab: int = 100_000, seed: int = 0,
                      sentence_len: int = 25) -> Path:
    """Whitespace-tokenized text whose word frequencies follow Zipf's law, like real text."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    with open(path, "w") as f:
        left = n_tokens
        while left > 0:
            n = min(left, 1_000_000)
            ids = np.minimum(rng.zipf(1.1, n) - 1, vocab - 1)
            toks = words[ids]
            lines = [" ".join(toks[i:i + sentence_len]) for i in range(0, n, sentence_len)]
            f.write("\n".join(lines) + "\n")
            left -= n
    return path


def machine() -> dict:
    import time

    import torch

    cpu = platform.processor() or platform.machine()
    try:  # the model name says more than "x86_64"
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def emit(result: dict, out: str | None, rows: list[tuple[str, str]]) -> None:
    """Print a two-column table and write the JSON."""
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"-> {out}")
