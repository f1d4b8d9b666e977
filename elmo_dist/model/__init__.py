"""The ELMo biLM in plain PyTorch: no distributed code, no optimiser, no I/O.

    from elmo_dist.model import build_bilm
    bilm = build_bilm(cfg.model, vocab_size=len(vocab))
"""
from elmo_dist.model.bilm import BiLM, build_bilm

__all__ = ["BiLM", "build_bilm"]
