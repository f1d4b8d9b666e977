"""The fine-tuning config: which biLM, which data, which layer combination, how to train.

    cfg = load_finetune_config("configs/finetune.yaml", ["variants=[frozen,scalar_mix]"])

Same rules as the pretraining config (elmo_dist.configlib): defaults <- YAML <- dotted overrides,
unknown keys name the closest valid key. `configs/finetune.yaml` documents every key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from elmo_dist import configlib
from elmo_dist.config.slurm import SlurmConfig, validate_slurm

# the ways of combining the biLM's layers (elmo_dist.model.scalar_mix builds them)
VARIANTS = ("frozen", "scalar_mix", "learned_fn", "top")


@dataclass
class BilmSection:
    path: str = "runs/demo/pretrain"
    """A pretraining run directory (its newest checkpoint) or a checkpoints/step-N directory."""
    trainable: bool = False
    """Fine-tune the biLM too (with bilm.lr); frozen by default."""
    lr: float = 1e-4
    cache: bool = True
    """With a frozen biLM, compute every document's layers once and reuse them for all epochs and variants."""
    batch_size: int = 16
    """Documents per biLM forward pass when computing the layers."""


@dataclass
class TaskSection:
    format: str = "auto"
    """auto | agnews | csv | tsv | jsonl | folders (one sub-folder per class)."""
    train: str = ""
    valid: str = ""
    """Optional; split off train (stratified, deterministic) when empty."""
    test: str = ""
    """Optional; split off train when empty."""
    text_fields: list = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    max_tokens: int = 300
    """Documents are cut to their first max_tokens tokens."""


@dataclass
class ClassifierSection:
    variant: str = "scalar_mix"
    """frozen | scalar_mix | learned_fn | top (used when `variants` is empty)."""
    encoder: str = "pool"
    """pool (masked mean+max over tokens) | bilstm (a BiLSTM over the mixed tokens, then pooling)."""
    pooling: str = "mean_max"
    """mean_max | mean | max."""
    token_dim: int = 512
    """pool encoder: width of the per-token Linear -> ReLU before pooling (0 = pool the mixed layers directly)."""
    hidden_dim: int = 256
    dropout: float = 0.3
    bilstm_dim: int = 128
    layer_norm: bool = False
    """Scalar mix only: layer-normalise each layer before mixing."""
    mix_l2: float = 0.0
    """Scalar mix only: L2 penalty on the (unnormalised) layer weights."""
    learned_fn_hidden: int = 256
    """learned_fn only: hidden width of the MLP over the concatenated layers."""


@dataclass
class FinetuneOptim:
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0


@dataclass
class FinetuneTrain:
    run_dir: str = "runs/finetune"
    epochs: int = 30
    batch_size: int = 32
    patience: int = 5
    """Stop after this many epochs without a better validation accuracy; the best epoch is kept."""
    seed: int = 0
    device: str = "auto"


@dataclass
class FinetuneConfig:
    bilm: BilmSection = field(default_factory=BilmSection)
    data: TaskSection = field(default_factory=TaskSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    variants: list = field(default_factory=list)
    """Run these variants one after the other, each in RUN_DIR/<variant>, and compare them.
    Empty: train only classifier.variant, with its outputs in RUN_DIR itself."""
    baseline: bool = True
    """Add a TF-IDF + logistic-regression row, trained and tested on the same split."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """How `elmo-dist submit finetune` runs this config (one array task per variant)."""


_require = configlib.require


def validate_finetune(cfg: FinetuneConfig) -> None:
    for v in cfg.variants or [cfg.classifier.variant]:
        _require(v in VARIANTS, "variants" if cfg.variants else "classifier.variant",
                 f"has '{v}', expected one of {', '.join(VARIANTS)}")
    _require(cfg.classifier.encoder in ("pool", "bilstm"), "classifier.encoder", "must be pool or bilstm")
    _require(cfg.classifier.pooling in ("mean", "max", "mean_max"), "classifier.pooling", "must be mean, max or mean_max")
    _require(0 <= cfg.classifier.dropout < 1, "classifier.dropout", "must be in [0, 1)")
    _require(bool(cfg.data.train), "data.train", "must name the training file or folder")
    _require(cfg.data.format in ("auto", "agnews", "csv", "tsv", "jsonl", "folders"), "data.format",
             f"must be auto, agnews, csv, tsv, jsonl or folders, got '{cfg.data.format}'")
    _require(cfg.data.max_tokens > 0, "data.max_tokens", "must be positive")
    _require(0 < cfg.data.valid_fraction < 1 and 0 < cfg.data.test_fraction < 1, "data.valid_fraction",
             "and data.test_fraction must be in (0, 1)")
    for key in ("epochs", "batch_size", "patience"):
        _require(getattr(cfg.train, key) > 0, f"train.{key}", "must be positive")
    _require(cfg.optim.lr > 0 and cfg.bilm.lr > 0, "optim.lr", "and bilm.lr must be positive")
    _require(cfg.bilm.batch_size > 0, "bilm.batch_size", "must be positive")
    validate_slurm(cfg.slurm)


def load_finetune_config(path: str | Path | None, overrides: list[str] = ()) -> FinetuneConfig:
    tree = configlib.read_yaml(path, FinetuneConfig) if path else {}
    over = configlib.parse_overrides(list(overrides), FinetuneConfig)
    source = str(path) if path else "overrides"
    cfg = configlib.build(FinetuneConfig, [configlib.merge_trees(tree, over)], source)
    validate_finetune(cfg)
    return cfg


def single_variant(cfg: FinetuneConfig, which: str) -> FinetuneConfig:
    """The config of one of cfg.variants (by name or 0-based index), to run alone in RUN_DIR/<variant>.

    This is how a job array splits the comparison: task i trains variants[i].
    """
    names = list(cfg.variants) or [cfg.classifier.variant]
    if str(which).isdigit():
        _require(int(which) < len(names), "variants", f"has {len(names)} entries; there is no variant #{which}")
        variant = names[int(which)]
    else:
        _require(which in names, "variants", f"does not include '{which}' ({', '.join(names)})")
        variant = which
    tree = configlib.to_container(cfg)
    tree = configlib.merge_trees(tree, {"variants": [], "classifier": {"variant": variant},
                                        "train": {"run_dir": str(Path(cfg.train.run_dir) / variant)}})
    out = configlib.build(FinetuneConfig, [tree], "config")
    validate_finetune(out)
    return out
