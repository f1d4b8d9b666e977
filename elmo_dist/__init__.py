"""elmo_dist: a distributed batch trainer for ELMo bidirectional language models.

    elmo-dist prepare corpus/*.txt --out data/prepared
    elmo-dist pretrain configs/debug.yaml data.dir=data/prepared
    elmo-dist evaluate runs/debug

    from elmo_dist import Elmo, batch_to_ids     # AllenNLP's ELMo API (elmo_dist.elmo)

`Elmo` and `batch_to_ids` load on first use, so `import elmo_dist` (and the CLI, which installs its
signal handlers first) stays free of torch.
"""
__version__ = "0.1.0"
__all__ = ["Elmo", "batch_to_ids", "__version__"]


def __getattr__(name: str):
    if name in ("Elmo", "batch_to_ids"):
        from elmo_dist import elmo

        return getattr(elmo, name)
    raise AttributeError(f"module 'elmo_dist' has no attribute {name!r}")
