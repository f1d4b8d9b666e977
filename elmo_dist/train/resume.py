"""What the trainer checks before it continues a run: whether the newest
checkpoint fits the command that wants to resume it.

    check_fits(latest, cfg, vocab)                   # architecture and vocabulary, or CheckpointError
    same_layout = check_layout(path, state, cfg, n)  # ZeRO layout, or CheckpointError; False = fresh LSTM state
    good = set_aside_unusable(checkpointer, corpus, cfg)  # after a divergence: the newest usable checkpoint
    done = finished_summary(cfg)                     # the summary of a run already at train.max_steps, or None
    check_run_dir(cfg)                               # train.run_dir is not data.dir, or OutputError

Each refusal is one line naming the checkpoint and what to do instead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from elmo_dist.config import PretrainConfig, arch_diff, load
from elmo_dist.data.batching import eval_batches
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError, OutputError
from elmo_dist.files import same_file
from elmo_dist.runs import open_run
from elmo_dist.runtime.checkpoint import Checkpointer
from elmo_dist.runtime.logs import log
from elmo_dist.train.evaluate import to_device


def check_run_dir(cfg: PretrainConfig) -> None:
    """OutputError if train.run_dir is data.dir: the run's files would replace the corpus's."""
    if same_file(cfg.train.run_dir, cfg.data.dir):
        raise OutputError(f"{Path(cfg.train.run_dir)}: train.run_dir is data.dir; the run's vocab.txt and summary.json "
                          "would replace the prepared corpus's. Choose another train.run_dir")


def finished_summary(cfg: PretrainConfig) -> dict | None:
    """The saved summary of a run that has reached train.max_steps (its newest intact checkpoint is
    the step its summary.json reports as finished), else None. Running a finished run's command
    again must change nothing: before this check it re-saved the final checkpoint and rewrote
    summary.json with 0 tokens/s."""
    run_dir = Path(cfg.train.run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not summary.get("finished") or not isinstance(summary.get("steps"), int):
        return None
    latest = Checkpointer(run_dir, cfg.checkpoint.keep_last).newest()
    if latest is None or int(json.loads((latest / "trainer_state.json").read_text())["step"]) != summary["steps"]:
        return None
    return summary if summary["steps"] >= cfg.train.max_steps else None


def check_fits(latest: Path, cfg: PretrainConfig, vocab: Vocabulary) -> None:
    """Refuse to resume `latest` under another architecture or another vocabulary: softmax rows and
    embeddings are indexed by word id, so a new vocabulary would silently give them other words'
    meanings (and rewrite the run's vocab.txt, which describes its existing checkpoints)."""
    if cfg.checkpoint.resume == "never":
        raise CheckpointError(f"{cfg.train.run_dir}: has checkpoints and checkpoint.resume=never; "
                              "use a new train.run_dir")
    diff = arch_diff(load(PretrainConfig, latest / "config.yaml").model, cfg.model)
    if diff:
        raise CheckpointError(f"{latest}: architecture differs from the config ({'; '.join(diff)}); "
                              "use a new train.run_dir")
    saved = Path(cfg.train.run_dir) / "vocab.txt"
    if saved.is_file() and Vocabulary.load(saved).tokens != vocab.tokens:
        raise CheckpointError(f"{cfg.data.dir}: its vocabulary differs from {saved}, the one {latest} was "
                              "trained with; resume with that run's data.dir, or start a new train.run_dir "
                              f"with train.init_from={latest} to carry its weights over")


def check_layout(path: Path, state: dict, cfg: PretrainConfig, num_processes: int) -> bool:
    """Whether the checkpoint's processes x rows x window layout is this run's (so the carried LSTM
    state fits where the data continues).

    Another process count, `data.batch_size` or `data.unroll_steps` resumes at the same token of
    the epoch with a fresh LSTM state (a warning says so); a ZeRO checkpoint needs the same stage
    and process count.
    """
    same_processes = state["world_size"] == num_processes
    rows = int(state["data"].get("rows", cfg.data.batch_size))
    unroll = int(state["data"].get("unroll_steps", cfg.data.unroll_steps))
    zero = state["zero_stage"]
    if zero != cfg.dist.zero_stage or (zero and not same_processes):
        raise CheckpointError(f"{path}: saved with ZeRO stage {zero} on {state['world_size']} process(es); a ZeRO "
                              "checkpoint resumes only with the same stage and process count. Start a new run from "
                              "its weights with `elmo-dist export` instead")
    same = same_processes and rows == cfg.data.batch_size and unroll == cfg.data.unroll_steps
    if not same:
        log.warning("resuming a checkpoint of %d process(es) x %d rows x %d-token windows on %d x %d x %d: it had "
                    "read %d tokens of each lane this epoch; the data continues at the same fraction of the epoch "
                    "(rounded up to a whole window, so nothing is read twice) and the LSTM state restarts",
                    state["world_size"], rows, unroll, num_processes, cfg.data.batch_size, cfg.data.unroll_steps,
                    int(state["data"]["step"]) * unroll)
    return same


@torch.no_grad()
def usable(path: Path, corpus: PreparedCorpus, cfg: PretrainConfig) -> bool:
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


def set_aside_unusable(checkpointer: Checkpointer, corpus: PreparedCorpus, cfg: PretrainConfig) -> Path | None:
    """After a divergence: the newest complete checkpoint that is `usable`. Newer ones that are not
    are set aside as `rejected-step-N` (kept for inspection, never resumed), so that running the same
    command again continues from the good one."""
    for step in reversed(checkpointer.steps()):
        path = checkpointer.root / f"step-{step}"
        if checkpointer.verify(path) is not None:
            continue  # half-written or damaged: resuming skips it anyway
        if usable(path, corpus, cfg):
            return path
        aside = checkpointer.set_aside(path)
        log.warning("%s: not finite or not evaluable; set aside as %s", path, aside)
    return None
