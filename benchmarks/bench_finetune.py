"""Fine-tuning throughput and memory at two corpus sizes: documents/s for filling the layer cache
and for one training epoch, and the peak anonymous resident memory (RssAnon).

    python -m benchmarks.bench_finetune --docs 30000 120000

The corpus is generated to look like AG News: a title and a description per article, 4 classes,
titles of 4-12 words and descriptions of 12-70 (AG News: about 7 and 31 on average), words drawn
from a Zipf law over a shared vocabulary plus a topic vocabulary per class. The biLM is the demo's
architecture (configs/demo.yaml); its weights don't change the cost, so an untrained one is used
unless `--bilm` names a run. Each size runs in a fresh process, so its peak memory is its own.

RssAnon is sampled every 20 ms: it counts the process's own memory, not the mapped cache pages the
kernel keeps in the page cache, which is what grows with the corpus by design.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, machine

REPO = Path(__file__).resolve().parent.parent


def write_agnews_like(path: Path, n_docs: int, seed: int = 0, shared: int = 30_000, topical: int = 3_000) -> Path:
    """An AG-News-format CSV ("class","title","description") of `n_docs` generated articles."""
    rng = np.random.default_rng(seed)
    common = np.array([f"w{i}" for i in range(shared)])
    topics = [np.array([f"c{c}t{i}" for i in range(topical)]) for c in range(4)]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n_docs, 10_000):
            n = min(10_000, n_docs - start)
            classes = rng.integers(4, size=n)
            title_len, desc_len = rng.integers(4, 13, size=n), rng.integers(12, 71, size=n)
            rows = []
            for c, t, d in zip(classes.tolist(), title_len.tolist(), desc_len.tolist()):
                words = _words(rng, common, topics[c], t + d)
                rows.append(f'"{c + 1}","{" ".join(words[:t])}","{" ".join(words[t:])}"\n')
            f.writelines(rows)
    return path


def _words(rng, common: np.ndarray, topic: np.ndarray, n: int) -> list[str]:
    """n words, about one in four from the class's topic vocabulary."""
    ids = np.minimum(rng.zipf(1.2, n) - 1, len(common) - 1)
    out = common[ids]
    own = rng.random(n) < 0.25
    out[own] = topic[np.minimum(rng.zipf(1.3, own.sum()) - 1, len(topic) - 1)]
    return out.tolist()


def untrained_demo_bilm(out: Path) -> Path:
    """An export directory holding a freshly initialised biLM of the demo's size."""
    import torch

    from elmo_dist.config import PretrainConfig, load
    from elmo_dist.data.vocab import SPECIALS, Vocabulary
    from elmo_dist.model import build_bilm
    from elmo_dist.runtime.checkpoint import write_export

    cfg = load(PretrainConfig, REPO / "configs/demo.yaml")
    torch.manual_seed(0)
    model = build_bilm(cfg.model, len(SPECIALS))
    write_export(out, model.state_dict(), PretrainConfig(model=cfg.model), {"source": "bench_finetune", "step": 0},
                 vocab=Vocabulary(list(SPECIALS)))
    return out


class RssAnonPeak:
    """The largest RssAnon of this process, sampled on a thread (kB in /proc/self/status)."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak_kib, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.now_kib())
            time.sleep(self.every_s)

    def __enter__(self) -> "RssAnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())


def child(csv: str, bilm: str, work: str, batch_size: int) -> dict:
    from elmo_dist.classify.documents import build_splits, label_index
    from elmo_dist.classify.inputs import classification_data, layer_sources
    from elmo_dist.classify.objectives import build_objective
    from elmo_dist.classify.variant import VariantRun
    from elmo_dist.config import FinetuneConfig, load
    from elmo_dist.embedder import Embedder
    from elmo_dist.runtime.accel import build_accelerator

    cfg = load(FinetuneConfig, REPO / "configs/finetune.yaml", [
        f"bilm.path={bilm}", f"data.train={csv}", "data.format=agnews", "data.max_tokens=100", "variants=[frozen]",
        "train.epochs=1", "baseline=false", "train.device=cpu", f"bilm.cache_dir={work}/cache",
        f"train.run_dir={work}/run", f"train.batch_size={batch_size}"])
    with RssAnonPeak() as peak:
        start_kib = RssAnonPeak.now_kib()
        d = cfg.data
        splits = build_splits(d.train, d.valid, d.test, d.format, list(d.text_fields), d.label_field,
                              d.valid_fraction, d.test_fraction, d.split_seed)
        embedder = Embedder.from_run(bilm, "cpu")
        data = classification_data(cfg, embedder, splits, label_index(splits.labels))
        y = data.targets
        t0 = time.perf_counter()
        acc = build_accelerator("cpu", cfg.dist)
        sources = layer_sources(cfg, embedder, data, Path(work) / "run", acc)
        cache_s = time.perf_counter() - t0
        out = Path(work) / "run" / "frozen"
        out.mkdir(parents=True, exist_ok=True)
        run = VariantRun("frozen", cfg, data, build_objective(cfg, data, embedder.device), embedder, sources,
                         out, acc)
        t0 = time.perf_counter()
        run.train_epoch()
        epoch_s = time.perf_counter() - t0
    n_docs = sum(len(v) for v in y.values())
    tokens = int(sum(len(s.lengths) and s.lengths.sum() for s in sources.values()))
    cache_bytes = sum(f.stat().st_size for f in (Path(work) / "cache").rglob("layers-*.f16"))
    return {"docs": n_docs, "train_docs": len(y["train"]), "tokens": tokens, "cache_seconds": cache_s,
            "cache_docs_per_s": n_docs / cache_s, "epoch_seconds": epoch_s,
            "epoch_docs_per_s": len(y["train"]) / epoch_s, "cache_mib": cache_bytes / 2**20,
            "rss_anon_start_mib": start_kib / 1024, "rss_anon_peak_mib": peak.peak_kib / 1024}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[30_000, 120_000])
    p.add_argument("--bilm", help="a run or export to fine-tune on (default: an untrained demo-size biLM)")
    p.add_argument("--batch-size", type=int, default=32, help="classifier batch (documents)")
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument("--child", nargs=3, metavar=("CSV", "BILM", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.batch_size)))
        return {}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        bilm = args.bilm or str(untrained_demo_bilm(Path(tmp) / "bilm"))
        for n in args.docs:
            csv = write_agnews_like(Path(tmp) / f"agnews-{n}.csv", n)
            work = Path(tmp) / f"work-{n}"
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_finetune", "--batch-size",
                                   str(args.batch_size), "--child", str(csv), bilm, str(work)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode:
                raise SystemExit(f"bench_finetune: the {n}-document run failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    res = {"runs": runs, "bilm": args.bilm or "untrained, configs/demo.yaml's size", "max_tokens": 100,
           "variant": "frozen", "machine": machine()}
    rows = [(f"{r['docs']:,} documents ({r['tokens']:,} tokens)",
             f"cache {r['cache_docs_per_s']:,.0f} docs/s ({r['cache_seconds']:.0f} s, {r['cache_mib']:,.0f} MiB on "
             f"disk); epoch {r['epoch_docs_per_s']:,.0f} docs/s ({r['epoch_seconds']:.0f} s); peak RssAnon "
             f"{r['rss_anon_peak_mib']:,.0f} MiB (at start {r['rss_anon_start_mib']:,.0f})") for r in runs]
    emit(res, args.out, rows)
    return res


if __name__ == "__main__":
    main()
