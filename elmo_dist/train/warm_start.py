"""`train.init_from`: start a new run from another run's, an export's or an imported ELMo model's weights.

    elmo-dist pretrain configs/original.yaml data.dir=data/mine train.init_from=models/elmo-original

The token encoder and LSTMs must have the same architecture. The softmax is kept only when the
source was trained over the same vocabulary with the same softmax kind; otherwise (a different
corpus, or an import, which has no softmax) a new one is trained over this corpus's vocabulary.
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
    if not keep:
        state = {k: v for k, v in state.items() if not k.startswith("softmax.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("softmax.") for k in missing):
        raise CheckpointError(f"{saved.path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return f"initialised from {saved.path}: " + ("all weights" if keep else
                                                  f"encoder and LSTMs; a new softmax over {len(vocab):,} words")
