"""`train.init_from`: start a new run from another run's, an export's or an imported ELMo model's weights.

    elmo-dist pretrain configs/original.yaml data.dir=data/mine train.init_from=models/elmo-original

The token encoder and LSTMs must have the same architecture. The softmax is kept only when the
source was trained over the same vocabulary with the same softmax kind; otherwise (a different
corpus, or an import, which has no softmax) a new one is trained over this corpus's vocabulary.
Only a fresh run starts this way: a run with checkpoints resumes from them and ignores init_from.
"""
from __future__ import annotations

from elmo_dist import config as C
from elmo_dist.data.vocab import Vocabulary
from elmo_dist.errors import CheckpointError
from elmo_dist.train import checkpoint as ckpt

SOFTMAX_KEYS = ("softmax", "adaptive_cutoffs")


def warm_start(model, cfg: C.Config, vocab: Vocabulary, path: str) -> str:
    """Load `path`'s weights into `model`; a line saying what was taken."""
    found = ckpt.resolve(path)
    source = C.load_config(found / "config.yaml")
    diff = [d for d in C.arch_diff(source.model, cfg.model) if d.split(":")[0].split(".")[1] not in SOFTMAX_KEYS]
    if diff:
        raise CheckpointError(f"{found}: train.init_from has a different architecture ({'; '.join(diff)})")
    state = ckpt.load_model_state(found)
    src_vocab = ckpt.run_dir_of(found) / "vocab.txt"
    same_vocab = src_vocab.is_file() and Vocabulary.load(src_vocab).tokens == vocab.tokens
    keep = ckpt.has_softmax(found) and same_vocab and source.model.softmax == cfg.model.softmax
    if not keep:
        state = {k: v for k, v in state.items() if not k.startswith("softmax.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("softmax.") for k in missing):
        raise CheckpointError(f"{found}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return f"initialised from {found}: " + ("all weights" if keep else
                                             f"encoder and LSTMs; a new softmax over {len(vocab):,} words")
