"""Every elmo_dist config, as typed dataclasses: the bottom layer above `errors` and `files`.

    from elmo_dist.config import FinetuneConfig, PretrainConfig, load
    cfg = load(PretrainConfig, "configs/debug.yaml", ["train.max_steps=100"])
    ft = load(FinetuneConfig, "configs/finetune.yaml", ["bilm.path=runs/x"])

- `base`: the machinery (YAML, dotted overrides, closest-key errors, `load`, `from_tree`, saving);
- `pretrain`: the pretraining run config (`PretrainConfig`: model, data, optim, train, checkpoint,
  logging, dist, slurm);
- `finetune`: the fine-tuning config (`FinetuneConfig`);
- `process_group`: the process-group keys both carry in `dist` (backend, connect and collective timeouts);
- `slurm`: the `slurm` section both carry, read only by `elmo-dist submit`.

Each key is documented once, in its field's docstring; `configs/reference/` is generated from them
(`python -m elmo_dist.config.reference --write`) and a test keeps the two equal.
"""
from elmo_dist.config.base import from_tree, load, merge_trees, save_config, to_container, to_yaml, valid_keys
from elmo_dist.config.finetune import VARIANTS, FinetuneConfig, single_variant
from elmo_dist.config.pretrain import (
    ARCH_KEYS,
    FLAVOURS,
    FULL_FILTERS,
    SMALL_FILTERS,
    CheckpointConfig,
    DataConfig,
    DistConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    arch_diff,
    parse_signal,
    require_byte_chars,
)
from elmo_dist.config.slurm import SlurmConfig, extra_parameters, tasks_per_node

__all__ = [
    "ARCH_KEYS", "FLAVOURS", "FULL_FILTERS", "SMALL_FILTERS", "VARIANTS", "CheckpointConfig", "DataConfig",
    "DistConfig", "FinetuneConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "SlurmConfig",
    "TrainConfig", "arch_diff", "extra_parameters", "from_tree", "load", "merge_trees", "parse_signal",
    "require_byte_chars", "save_config", "single_variant", "tasks_per_node", "to_container", "to_yaml", "valid_keys",
]
