"""`train.init_from`: start a new run from another run's, an export's or an imported ELMo model's weights.

    elmo-dist pretrain configs/original.yaml data.dir=data/mine train.init_from=models/elmo-original

The token encoder and LSTMs must have the same architecture. The softmax is kept whole when the
source was trained over the same vocabulary with the same softmax kind. Over another vocabulary
(continued pretraining on a new domain) the new softmax starts as the model's own initialisation
and then takes the source's row (weight and bias) of every word both vocabularies spell alike, so
the shared words start where the source left them (full and sampled softmax; an adaptive one
starts fresh). A source without a softmax (an import without --softmax) gives a fresh one.
Only a fresh run starts this way: a run with checkpoints resumes from them and ignores init_from.
"""
from __future__ import annotations

from elmo_dist.config import PretrainConfig, arch_diff
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError
from elmo_dist.runs import open_run

SOFTMAX_KEYS = ("softmax", "adaptive_cutoffs")


def warm_start(model, cfg: PretrainConfig, vocab: Vocabulary, path: str) -> str:
    """Load `path`'s weights into `model`; a line saying what was taken."""
    saved = open_run(path)
    diff = [d for d in arch_diff(saved.config.model, cfg.model) if d.split(":")[0].split(".")[1] not in SOFTMAX_KEYS]
    if diff:
        raise CheckpointError(f"{saved.path}: train.init_from has a different architecture ({'; '.join(diff)})")
    state = saved.weights()
    same_vocab = (saved.home / "vocab.txt").is_file() and saved.vocab().tokens == vocab.tokens
    keep = saved.has_softmax and same_vocab and saved.config.model.softmax == cfg.model.softmax
    rows = {k: state[k] for k in ("softmax.weight", "softmax.bias") if k in state}
    if not keep:
        state = {k: v for k, v in state.items() if not k.startswith("softmax.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("softmax.") for k in missing):
        raise CheckpointError(f"{saved.path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if keep:
        return f"initialised from {saved.path}: all weights"
    kinds = {saved.config.model.softmax, cfg.model.softmax}
    if saved.has_softmax and (saved.home / "vocab.txt").is_file() and "adaptive" not in kinds and len(rows) == 2:
        carried = carry_softmax_rows(model, rows, saved.vocab(), vocab)
        return (f"initialised from {saved.path}: encoder and LSTMs; softmax rows of {carried:,} of {len(vocab):,} "
                f"words carried over (spelled alike in both vocabularies), {len(vocab) - carried:,} new")
    return f"initialised from {saved.path}: encoder and LSTMs; a new softmax over {len(vocab):,} words"


def carry_softmax_rows(model, rows: dict, source: Vocabulary, target: Vocabulary) -> int:
    """Copy the source softmax's row (`rows`: softmax.weight [V_s, D], softmax.bias [V_s]) of every
    word of `target` that `source` spells alike into `model`'s softmax; the number of such words."""
    import torch

    where = {w: i for i, w in enumerate(source.tokens)}
    pairs = [(i, where[w]) for i, w in enumerate(target.tokens) if w in where]
    if not pairs:
        return 0
    new, old = (torch.tensor(ix) for ix in zip(*pairs))
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(model.softmax, name)
            param[new.to(param.device)] = rows[f"softmax.{name}"][old].to(param.device, param.dtype)
    return len(pairs)
