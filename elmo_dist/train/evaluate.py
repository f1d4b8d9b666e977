"""Held-out perplexity with the exact full softmax, and the unigram baseline beside it; and
`elmo-dist evaluate RUN [key=value ...]`, the same for saved weights.

    elmo-dist evaluate runs/debug                       # newest checkpoint, the run's own held-out split
    elmo-dist evaluate runs/debug/checkpoints/step-500 data.dir=other/prepared


Perplexity per direction is exp(total NLL / number of targets); `val_ppl` is exp of the mean of
the two directions' mean NLL, the figure bilm-tf reports (39.7 for the original ELMo).
`unigram_ppl` is the held-out perplexity of the add-one-smoothed training unigram distribution:
a model that has learned anything is far below it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from elmo_dist.config import ARCH_KEYS, PretrainConfig, load, require_byte_chars, save_config
from elmo_dist.data.batching import eval_batches, eval_length
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.vocab import BOS_ID, EOS_ID
from elmo_dist.errors import CheckpointError, ConfigError, OutputError
from elmo_dist.files import refuse_overwrite, writable_dir
from elmo_dist.runs import open_run, resolve_device

TENSOR_KEYS = ("token_ids", "chars", "fwd_index", "bwd_index", "fwd_targets", "bwd_targets")


def to_device(batch: dict, device: torch.device) -> dict:
    pin = torch.device(device).type == "cuda"  # page-locked host memory makes the copy truly asynchronous
    out = {k: _host(batch[k], pin).to(device, non_blocking=True) for k in TENSOR_KEYS}
    out["reset"] = batch["reset"]
    return out


def _host(array, pin: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.pin_memory() if pin else t


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL in nats); inf where that overflows a float (a finite loss above ~709, as after a
    loss spike), never an OverflowError."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def ppl_summary(nll_fwd: float, nll_bwd: float, count: float) -> dict:
    fwd, bwd = nll_fwd / max(count, 1), nll_bwd / max(count, 1)
    return {"val_ppl_fwd": perplexity(fwd), "val_ppl_bwd": perplexity(bwd), "val_ppl": perplexity(0.5 * (fwd + bwd))}


@torch.no_grad()
def evaluate_bilm(model, corpus: PreparedCorpus, data_cfg, device, reduce=None, rank: int = 0,
                  world_size: int = 1) -> dict:
    """Exact held-out perplexities; each rank takes its own lanes, `reduce` sums across processes."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    state = None
    context = data_cfg.eval_context_tokens if data_cfg.stateful else 0  # a stateless LSTM has no state to warm
    for batch in eval_batches(corpus, data_cfg.eval_batch_size, data_cfg.unroll_steps, data_cfg.max_eval_tokens,
                              rank=rank, world_size=world_size, context_tokens=context):
        b = to_device(batch, device)
        if b["reset"] or not data_cfg.stateful:
            state = None
        if "fresh" in batch and state is not None:
            state = [_zero_rows(s, torch.as_tensor(rows, device=device)) for s, rows in zip(state, batch["fresh"])]
        out = model(b, state, full_softmax=True)
        state = out["state"]
        totals += torch.stack([out["nll_fwd"], out["nll_bwd"], out["count_fwd"], out["count_bwd"]]).double()
    if reduce is not None:
        totals = reduce(totals)
    model.train(was_training)
    nll_f, nll_b, n_f, n_b = totals.tolist()
    assert n_f == n_b, "every held-out token is predicted once in each direction"
    # the lanes and their warm-up context are part of what the figure means (docs/pretraining.md, Evaluate)
    return {**ppl_summary(nll_f, nll_b, n_f), "val_tokens": int(n_f), "val_lanes": data_cfg.eval_batch_size,
            "val_context_tokens": context}


def _zero_rows(layers: list, rows: torch.Tensor) -> list:
    """One direction's LSTM state ([(h, c)] per layer, each [1, rows, dim]) with `rows` set to zero."""
    keep = (~rows).to(layers[0][0].dtype)[None, :, None]
    return [(h * keep, c * keep) for h, c in layers]


def unigram_ppl(corpus: PreparedCorpus, max_tokens: int = 0) -> float:
    """Held-out perplexity of the smoothed training unigram model, over the same targets as the biLM."""
    counts = corpus.vocab.counts
    if counts is None:
        return float("nan")
    v = len(counts)
    stream = corpus.stream("heldout")
    n = eval_length(stream, max_tokens)
    held = np.zeros(v, dtype=np.int64)
    for start in range(0, n, 1 << 20):
        held += np.bincount(corpus.softmax_ids(stream.read(start, min(n, start + (1 << 20)))), minlength=v)
    total = 0.0
    # forward targets are every token but <S>; backward targets every token but </S>
    for skip in (BOS_ID, EOS_ID):
        train = counts.astype(np.float64).copy()
        train[skip] = 0
        logp = np.log((train + 1) / (train.sum() + v))
        h = held.copy()
        h[skip] = 0
        total += -(h * logp).sum() / h.sum()
    return perplexity(total / 2)


def evaluate_checkpoint(path: str, overrides: list[str], out: str | None = None) -> dict:
    """Held-out perplexity of a run, checkpoint, export or import (with a softmax); summary.json goes to
    `out` (default RUN/eval/step-N). The saved config is the base, so `overrides` may point data.dir
    at another prepared corpus, which must share the run's vocabulary; the model is the checkpoint's,
    so an override that would change it (model.flavour, the architecture, the clips) is refused.

    Everything about the output is settled before the evaluation: `out` must not be a directory
    the command reads (the run's own config.yaml and summary.json would be replaced), and must be
    writable. A read-only run (evaluating someone else's model) without `--out` writes to
    ./eval/<run>/<step-N> instead, and the summary's "warnings" say so.
    """
    saved = open_run(path)
    require_byte_chars(saved.config.model, "evaluate")  # the prepared corpus holds byte char ids only
    if not saved.has_softmax:
        raise CheckpointError(f"{saved.path}: imported without a softmax, so it has no perplexity; import with "
                              "--vocab and --softmax, or train one: elmo-dist pretrain CONFIG train.init_from="
                              + str(saved.path))
    cfg = load(PretrainConfig, saved.path / "config.yaml", overrides, text=saved.config_text)
    _refuse_model_change(saved, cfg)
    corpus = PreparedCorpus(cfg.data.dir, cfg.model.max_chars_per_token)
    run_vocab = saved.home / "vocab.txt"
    if run_vocab.is_file() and saved.vocab().tokens != corpus.vocab.tokens:
        raise CheckpointError(f"{cfg.data.dir}: its vocabulary differs from {run_vocab}, "
                              "the one the run was trained with")
    out_dir, warnings = _summary_dir(saved, cfg, out)
    device = resolve_device(cfg.train.device)
    model = saved.build_model(device, len(corpus.vocab), cfg.model, vocab_file=Path(cfg.data.dir) / "vocab.txt")
    t0 = time.perf_counter()
    res = evaluate_bilm(model, corpus, cfg.data, device)
    seconds = time.perf_counter() - t0
    summary = {**res, "unigram_ppl": unigram_ppl(corpus, cfg.data.max_eval_tokens), "steps": saved.step,
               "tokens": res["val_tokens"], "tokens_per_s": res["val_tokens"] / max(seconds, 1e-9),
               "checkpoint": str(saved.path), "data_dir": cfg.data.dir, "warnings": warnings}
    summary["summary_path"] = str(out_dir / "summary.json")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    save_config(cfg, out_dir / "config.yaml")
    return summary


# what shapes the model's output: an override of these would evaluate another model than the one saved
_MODEL_FIXED = ("flavour", *ARCH_KEYS, "cell_clip", "proj_clip", "residual")


def _refuse_model_change(saved, cfg) -> None:
    changed = [f"model.{k}: {getattr(saved.config.model, k)} -> {getattr(cfg.model, k)}" for k in _MODEL_FIXED
               if getattr(saved.config.model, k) != getattr(cfg.model, k)]
    if changed:
        raise ConfigError(f"{saved.path}: evaluate takes the model from the checkpoint; the overrides change it "
                          f"({'; '.join(changed)}). Drop them")


def _summary_dir(saved, cfg, out: str | None) -> tuple[Path, list[str]]:
    """Where summary.json and config.yaml go, checked writable and apart from every input."""
    out_dir = Path(out) if out else saved.home / "eval" / saved.path.name
    outputs = [out_dir / "summary.json", out_dir / "config.yaml"]
    data_dir = Path(cfg.data.dir)
    inputs = [*saved.source_files(), *(p for p in data_dir.iterdir() if p.is_file())]
    refuse_overwrite(outputs, inputs, "evaluate")
    if out:
        return writable_dir(out_dir, "--out"), []
    try:
        return writable_dir(out_dir, "--out"), []
    except OutputError as e:
        elsewhere = Path("eval") / saved.home.name / saved.path.name
        refuse_overwrite([elsewhere / "summary.json", elsewhere / "config.yaml"], inputs, "evaluate")
        return writable_dir(elsewhere, "--out"), [f"{e}; the summary goes to {elsewhere} instead"]
