"""What the trainer checks before it continues a run: whether the newest
checkpoint fits the command that wants to resume it.

    check_fits(latest, cfg, vocab)                   # architecture and vocabulary, or CheckpointError
    same_layout = check_layout(path, state, cfg, n)  # ZeRO layout, or CheckpointError; False = fresh LSTM state
    good = set_aside_unusable(run_dir, corpus, cfg)  # after a divergence: the newest usable checkpoint

Each refusal is one line naming the checkpoint and what to do instead.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from elmo_dist.config import Config, arch_diff, load_config
from elmo_dist.data.batching import eval_batches
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError
from elmo_dist.runs import checkpoint_dir, list_steps, open_run, verify
from elmo_dist.train.evaluate import to_device
from elmo_dist.train.metrics import log


def check_fits(latest: Path, cfg: Config, vocab: Vocabulary) -> None:
    """Refuse to resume `latest` under another architecture or another vocabulary: softmax rows and
    embeddings are indexed by word id, so a new vocabulary would silently give them other words'
    meanings (and rewrite the run's vocab.txt, which describes its existing checkpoints)."""
    if cfg.checkpoint.resume == "never":
        raise CheckpointError(f"{cfg.train.run_dir}: has checkpoints and checkpoint.resume=never; "
                              "use a new train.run_dir")
    diff = arch_diff(load_config(latest / "config.yaml").model, cfg.model)
    if diff:
        raise CheckpointError(f"{latest}: architecture differs from the config ({'; '.join(diff)}); "
                              "use a new train.run_dir")
    saved = Path(cfg.train.run_dir) / "vocab.txt"
    if saved.is_file() and Vocabulary.load(saved).tokens != vocab.tokens:
        raise CheckpointError(f"{cfg.data.dir}: its vocabulary differs from {saved}, the one {latest} was "
                              "trained with; resume with that run's data.dir, or start a new train.run_dir "
                              f"with train.init_from={latest} to carry its weights over")


def check_layout(path: Path, state: dict, cfg: Config, num_processes: int) -> bool:
    """Whether the checkpoint's processes x rows layout is this run's (so the carried LSTM state fits).

    Another process count or `data.batch_size` resumes at the same fraction of the epoch with a
    fresh LSTM state (a warning says so); a ZeRO checkpoint needs the same stage and process count.
    """
    same_processes = state["world_size"] == num_processes
    rows = int(state["data"].get("rows", cfg.data.batch_size))
    zero = state["zero_stage"]
    if zero != cfg.dist.zero_stage or (zero and not same_processes):
        raise CheckpointError(f"{path}: saved with ZeRO stage {zero} on {state['world_size']} process(es); a ZeRO "
                              "checkpoint resumes only with the same stage and process count. Start a new run from "
                              "its weights with `elmo-dist export` instead")
    same = same_processes and rows == cfg.data.batch_size
    if not same:
        log.warning("resuming a checkpoint of %d process(es) x %d rows on %d x %d: the data position moves to "
                    "the same fraction of the epoch and the LSTM state restarts", state["world_size"], rows,
                    num_processes, cfg.data.batch_size)
    return same


@torch.no_grad()
def usable(path: Path, corpus: PreparedCorpus, cfg: Config) -> bool:
    """Whether a checkpoint can be continued from and evaluated: every weight finite, and the exact
    (full-softmax) loss of one held-out window finite. A run whose first updates were finite but
    absurd (lr 1e30: weights of 8e28) saved checkpoints that passed the first test and failed the
    second (held-out perplexity nan)."""
    saved = open_run(path)
    if not all(torch.isfinite(t).all() for t in saved.weights().values()):
        return False
    model = saved.build_model("cpu", len(corpus.vocab), cfg.model)
    batch = next(eval_batches(corpus, min(cfg.data.eval_batch_size, 8), cfg.data.unroll_steps, 4096), None)
    if batch is None:
        return True
    out = model(to_device(batch, torch.device("cpu")), None, full_softmax=True)
    return math.isfinite(float(out["nll_fwd"] + out["nll_bwd"]))


def set_aside_unusable(run_dir: Path, corpus: PreparedCorpus, cfg: Config) -> Path | None:
    """After a divergence: the newest complete checkpoint that is `usable`. Newer ones that are not
    are renamed `rejected-step-N` (kept for inspection, never resumed), so that running the same
    command again continues from the good one."""
    root = checkpoint_dir(run_dir)
    for step in reversed(list_steps(root)):
        path = root / f"step-{step}"
        if verify(path) is not None:
            continue  # half-written or damaged: resuming skips it anyway
        if usable(path, corpus, cfg):
            return path
        path.rename(root / f"rejected-step-{step}")
        log.warning("%s: not finite or not evaluable; set aside as %s", path, root / f"rejected-step-{step}")
    return None
