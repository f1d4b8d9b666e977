"""Every elmo_dist config, as typed dataclasses: the bottom layer above `configlib`.

    from elmo_dist.config import load_config, load_finetune_config
    cfg = load_config("configs/debug.yaml", ["train.max_steps=100"])          # pretraining
    ft = load_finetune_config("configs/finetune.yaml", ["bilm.path=runs/x"])  # fine-tuning

- `pretrain`: the pretraining run config (`Config`: model, data, optim, train, checkpoint, logging, dist, slurm);
- `finetune`: the fine-tuning config (`FinetuneConfig`);
- `group`: the process-group keys both carry in `dist` (backend, connect and collective timeouts);
- `slurm`: the `slurm` section both carry, read only by `elmo-dist submit`.

Each key is documented once, in its field's docstring; `configs/reference/` is generated from them
(`python -m elmo_dist.config.reference --write`) and a test keeps the two equal.
"""
from elmo_dist.config.finetune import (
    VARIANTS,
    FinetuneConfig,
    load_finetune_config,
    single_variant,
    validate_finetune,
)
from elmo_dist.config.pretrain import (
    ARCH_KEYS,
    FLAVOURS,
    FULL_FILTERS,
    SMALL_FILTERS,
    CheckpointConfig,
    Config,
    DataConfig,
    DistConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    arch_diff,
    config_from_tree,
    load_config,
    parse_signal,
    save_config,
    to_yaml,
    valid_keys,
    validate,
)
from elmo_dist.config.slurm import SlurmConfig, extra_parameters, tasks_per_node, validate_slurm

__all__ = [
    "ARCH_KEYS", "FLAVOURS", "FULL_FILTERS", "SMALL_FILTERS", "VARIANTS", "CheckpointConfig", "Config", "DataConfig",
    "DistConfig", "FinetuneConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "SlurmConfig", "TrainConfig",
    "arch_diff", "config_from_tree", "extra_parameters", "load_config", "load_finetune_config", "parse_signal",
    "save_config", "single_variant", "tasks_per_node", "to_yaml", "valid_keys", "validate", "validate_finetune",
    "validate_slurm",
]
