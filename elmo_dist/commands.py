"""One Python function per `elmo-dist` command: the entry points that the CLI, the Slurm jobs
(elmo_dist.launch) and users' own scripts share.

    from elmo_dist import commands
    from elmo_dist.config import PretrainConfig, load
    summary, is_main = commands.pretrain(load(PretrainConfig, "configs/debug.yaml", ["data.dir=data/prepared"]))

Each imports its implementation when called, so that importing this module (as the CLI does before
it has read a config) costs nothing; none of them prints: the CLI reports what they return.
"""
from __future__ import annotations

from pathlib import Path


def prepare(opts) -> dict:
    """`elmo-dist prepare`: the manifest of the prepared corpus (elmo_dist.data.prepare)."""
    from elmo_dist.data.prepare import prepare as run

    return run(opts)


def pretrain(cfg, stopper=None, stop_at_step: int = 0) -> tuple[dict, bool]:
    """`elmo-dist pretrain`: (the run's summary, whether this is the main process). `stopper` is the
    command's StopRequest (elmo_dist.runtime.stop); a Python caller that has none gets one here,
    listening to train.stop_signals for the duration of the process."""
    from elmo_dist.runtime.stop import stop_request
    from elmo_dist.train.trainer import pretrain as run

    if stopper is None:
        stopper = stop_request(cfg.train.stop_signals, cfg.train.deadline_margin_s)
    return run(cfg, stopper, stop_at_step)


def estimate(cfg, stopper=None, steps: int = 20, processes: list[int] = (8,), efficiency: float = 0.9,
             started: float | None = None) -> dict:
    """`elmo-dist pretrain --estimate`: the measured time of the run `cfg` describes, in seconds, on one
    process and scaled to `processes` (elmo_dist.train.estimate). Writes nothing. From Python, pass
    `started=time.perf_counter()` taken where the work began; the default counts from the process's
    start, as a fresh `elmo-dist pretrain` pays it."""
    from elmo_dist.runtime.stop import stop_request
    from elmo_dist.train.estimate import estimate as run

    if stopper is None:
        stopper = stop_request(cfg.train.stop_signals)
    return run(cfg, stopper, steps, list(processes), efficiency, started)


def evaluate(path: str | Path, overrides: list[str] = (), out: str | Path | None = None) -> dict:
    """`elmo-dist evaluate`: the held-out perplexities of a run, checkpoint, export or import."""
    from elmo_dist.train.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(str(path), list(overrides), None if out is None else str(out))


def finetune(cfg) -> dict:
    """`elmo-dist finetune`: train the variants and compare them; the summary."""
    from elmo_dist.classify.finetune import finetune as run

    return run(cfg)


def embed(run: str | Path, text: str | Path, out: str | Path, weights: list[float] | None = None,
          batch_size: int = 32, device: str = "auto", sentence_boundaries: bool = True,
          pool: str | None = None, dtype: str = "float32") -> dict:
    """`elmo-dist embed`: every line's layers (or their mean, `pool="mean"`) to HDF5
    (elmo_dist.embedder.embed_file)."""
    from elmo_dist.embedder import embed_file

    return embed_file(run, text, out, weights, batch_size, device, sentence_boundaries, pool, dtype)


def export(run: str | Path, out: str | Path | None = None) -> dict:
    """`elmo-dist export`: consolidated fp32 weights, config and vocabulary (elmo_dist.train.export)."""
    from elmo_dist.train.export import export_run

    return export_run(run, out)


def import_elmo(options: str | Path, weights: str | Path, out: str | Path, vocab: str | Path | None = None,
                softmax: str | Path | None = None) -> dict:
    """`elmo-dist import-elmo`: official ELMo weights into a run-like directory."""
    from elmo_dist.interop.elmo_hdf5 import import_elmo as run

    return run(options, weights, out, vocab, softmax)


def import_manylangs(model_dir: str | Path, out: str | Path) -> dict:
    """`elmo-dist import-elmo DIR OUT`: an ELMoForManyLangs model directory into a run-like directory."""
    from elmo_dist.interop.manylangs import import_manylangs as run

    return run(model_dir, out)


def export_elmo(run: str | Path, out: str | Path) -> dict:
    """`elmo-dist export-elmo`: a run in the official ELMo format."""
    from elmo_dist.interop.elmo_hdf5 import export_elmo as run_export

    return run_export(run, out)
