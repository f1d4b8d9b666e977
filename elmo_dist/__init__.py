"""elmo_dist: a distributed batch trainer for ELMo bidirectional language models.

    elmo-dist prepare corpus/*.txt --out data/prepared
    elmo-dist pretrain configs/debug.yaml data.dir=data/prepared
    elmo-dist evaluate runs/debug
"""
__version__ = "0.1.0"
