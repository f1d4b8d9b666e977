"""The pretraining config (`PretrainConfig`): model, data, optim, train, checkpoint, logging, dist, slurm.

    cfg = load(PretrainConfig, "configs/debug.yaml", ["train.max_steps=100", "model.lstm_dim=64"])

Precedence is CLI overrides > YAML file > the model flavour's preset > dataclass defaults
(elmo_dist.config.base). An unknown key is a ConfigError naming the closest valid key; a value of
the wrong type, or a word outside a `Literal` field's choices, names its key too. `save_config`
writes the resolved config that every run and checkpoint carries.
"""
from __future__ import annotations

import importlib.util
import signal
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from elmo_dist.config import base
from elmo_dist.config.process_group import ProcessGroupConfig, validate_process_group
from elmo_dist.config.slurm import SlurmConfig, validate_slurm
from elmo_dist.errors import ConfigError

# bilm-tf's char CNN: (width, number of filters) pairs, 2048 filters in total
FULL_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
SMALL_FILTERS = [[1, 16], [2, 16], [3, 32], [4, 64], [5, 128]]


@dataclass
class ModelConfig:
    flavour: str = "debug"
    """Named size preset (debug, small, medium, original); any field below overrides it."""
    encoder: Literal["char_cnn", "word"] = "char_cnn"
    """Token encoder: char_cnn (ELMo) or word (a plain word-embedding table)."""
    char_embed_dim: int = 16
    """Width of each character's embedding (char_cnn only)."""
    filters: list = field(default_factory=lambda: [list(f) for f in SMALL_FILTERS])
    """Char CNN filters as [width, count] pairs."""
    max_chars_per_token: int = 50
    """Characters per token, as ELMo's 50: <bow> + at most 48 UTF-8 bytes + <eow> (at least 3)."""
    char_vocab_size: int = 0
    """0: a token's char ids are ELMo's 261 UTF-8 byte ids. N > 0: ids from a char dictionary of N
    entries over Unicode characters, `chars.json` beside the weights (elmo_dist.data.char_dict), as an
    ELMoForManyLangs import has; embed, finetune, export and the Embedder read such a model, pretrain,
    evaluate, export-elmo and Elmo refuse it (they take byte ids)."""
    n_highway: int = 0
    """Highway layers after the char CNN (0 = none)."""
    word_embed_dim: int = 128
    """Embedding width of the `word` encoder (ignored by char_cnn)."""
    char_cnn_word_dim: int = 0
    """char_cnn only: width of a word embedding (one row per vocabulary word; others read `<UNK>`'s)
    put before the highway output, [word; chars], ahead of the projection, as ELMoForManyLangs models
    have it; 0 = none, as in ELMo."""
    lstm_dim: int = 256
    """LSTM cells per layer and direction."""
    projection_dim: int = 64
    """LSTM projection width; also the token-layer width and the softmax input width."""
    n_layers: int = 2
    """LSTM layers per direction."""
    cell_clip: Optional[float] = None
    """Clip LSTM cell values to +-cell_clip (ELMo uses 3). Set -> exact clipped cell, slower."""
    proj_clip: Optional[float] = None
    """Clip LSTM projections to +-proj_clip (ELMo uses 3). Set -> exact clipped cell, slower."""
    clipped_cell: Literal["auto", "triton", "torch"] = "auto"
    """How the clipped cell does each time step's gate arithmetic (with a clip set): triton (one fused
    kernel forward and one backward; CUDA, needs the triton package), torch (PyTorch ops), or auto
    (triton on CUDA when triton is installed, else torch). Same results within float rounding."""
    residual: bool = True
    """Residual connection around every LSTM layer after the first, as in ELMo."""
    dropout: float = 0.1
    """Dropout on each LSTM layer's input and on the output before the softmax, in [0, 1)."""
    softmax: Literal["sampled", "full", "adaptive"] = "sampled"
    """Training softmax: sampled, full or adaptive. Evaluation always uses the exact full softmax."""
    n_negative_samples: int = 1024
    """Negatives per step for the sampled softmax, drawn log-uniformly over the vocabulary (bilm-tf used 8192)."""
    adaptive_cutoffs: list = field(default_factory=lambda: [2000, 10000])
    """Adaptive softmax cluster boundaries, as vocabulary ids (softmax: adaptive only)."""


@dataclass
class DataConfig:
    dir: str = "data/prepared"
    """A directory written by `elmo-dist prepare`."""
    batch_size: int = 32
    """Rows per micro-batch per process."""
    unroll_steps: int = 20
    """Tokens per window (backprop through time stops at the window edge)."""
    stateful: bool = True
    """Carry the LSTM state from one window to the next of the same row, as bilm-tf does."""
    eval_batch_size: int = 64
    """Evaluation lanes in all (split across processes, so every process count gives the same result)."""
    max_eval_tokens: int = 0
    """Evaluate on at most this many held-out tokens (0 = all)."""
    eval_context_tokens: int = 200
    """Held-out text each evaluation lane reads, unscored, before its first scored window: the forward
    LSTM the text before the lane, the backward LSTM the text after it (rounded up to whole windows,
    at most one lane). A lane then starts with the state one long pass would have had there, so the
    perplexity hardly depends on eval_batch_size; 0 starts every lane from a zero state, which makes
    more lanes report a higher perplexity (docs/pretraining.md, Evaluate)."""


@dataclass
class OptimConfig:
    name: Literal["adagrad", "adam"] = "adagrad"
    """adagrad (ELMo's recipe) or adam."""
    lr: float = 0.2
    """Learning rate (the peak, after warmup). ELMo's Adagrad used 0.2."""
    adagrad_init_acc: float = 1.0
    """Adagrad's initial accumulator value (ELMo: 1.0); adagrad only."""
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    """Adam's [beta1, beta2]; adam only."""
    eps: float = 1e-8
    """Adam's epsilon; adam only."""
    weight_decay: float = 0.0
    """L2 weight decay, as torch's Adagrad and Adam apply it (0 = off)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many steps (0 = none)."""
    decay: Literal["none", "linear", "cosine"] = "none"
    """LR decay after warmup: none, linear or cosine (to min_lr_ratio x lr at max_steps)."""
    min_lr_ratio: float = 0.0
    """Where decay ends: the learning rate at train.max_steps is min_lr_ratio x lr."""
    grad_clip: float = 10.0
    """Global-norm gradient clipping (ELMo: 10; 0 = off)."""
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto"
    """How torch runs the update: fused (one kernel over all parameters), foreach (multi-tensor ops),
    loop (one parameter at a time), or auto = fused (CPU and CUDA both have it; on the CPU it measured
    5-7x faster than the loop; docs/performance.md). All three compute the same update, up to float
    rounding (fused differs from the loop by about 1e-7 per step)."""


@dataclass
class TrainConfig:
    run_dir: str = "runs/debug"
    """Where the run lives: config.yaml, vocab.txt, checkpoints/, tensorboard/ and summary.json."""
    max_steps: int = 1000
    """Optimizer steps to train for."""
    seed: int = 1234
    """Weights, data order and sampling all follow it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when present), cpu or cuda."""
    eval_every: int = 500
    """Held-out evaluation every N steps (0 = only at the end)."""
    stop_signals: list = field(default_factory=lambda: ["USR2", "TERM"])
    """On these signals, checkpoint at the next step boundary and exit: status 75 ("requeue me", e.g. Slurm's
    USR2 warning before preemption or the time limit) or 143 for TERM. Running the same command again resumes."""
    deadline_margin_s: int = 300
    """When the job's end time is known (Slurm, or ELMO_DIST_DEADLINE in seconds since the epoch), checkpoint
    and exit 75 this many seconds before it, plus room for a few of the slowest steps seen (the ranks of a
    multi-process run agree on stopping every 10 steps)."""
    nonfinite: Literal["skip", "stop", "off"] = "skip"
    """A step with a NaN/inf loss or gradient: skip (drop the update, count it), stop at once, or off
    (no check, and no host sync per step)."""
    max_nonfinite_steps: int = 5
    """Stop after this many bad steps in a row, naming the step and the last good checkpoint."""
    compile: bool = False
    """torch.compile the biLM (see docs/performance.md for what it buys)."""
    init_from: str = ""
    """Start a fresh run from these weights (a run, checkpoint, export or `import-elmo` directory);
    the softmax is kept only if the vocabulary matches. Ignored once the run has checkpoints."""


@dataclass
class CheckpointConfig:
    every: int = 500
    """Save every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Keep the newest N complete checkpoints (at least 1); older ones are deleted."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue from the newest complete checkpoint in run_dir; never: refuse a non-empty run_dir."""


@dataclass
class LoggingConfig:
    log_every: int = 50
    """Log the train/* scalars and a console line every N steps."""
    tensorboard: bool = True
    """Write TensorBoard events under run_dir/tensorboard."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """auto (a tqdm bar on a terminal, log lines otherwise), bar or lines."""


@dataclass
class DistConfig(ProcessGroupConfig):
    """Pretraining's `dist` section: the process-group keys (config/group.py), then precision and ZeRO."""

    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    """no | bf16 | fp16 | auto (bf16 on CUDA, no on CPU). fp16 needs CUDA; bf16 on CPU is a slow correctness path."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Global batch = data.batch_size x this x number of processes."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO: 0 = plain data parallel (DDP), 1 = shard optimizer state, 2 = + gradients, 3 = + weights."""
    offload_optimizer: Literal["none", "cpu"] = "none"
    """none | cpu: keep ZeRO's optimizer state in host memory (stages 1-3)."""
    offload_params: Literal["none", "cpu"] = "none"
    """none | cpu: keep the weights in host memory (stage 3 only)."""
    deepspeed_config: str = ""
    """Optional DeepSpeed JSON (e.g. configs/deepspeed/zero3.json) for bucket tuning; keys the run config
    also sets must agree with it, or the run stops."""


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The biLM: token encoder (char CNN or word embeddings), LSTM stack and training softmax."""
    data: DataConfig = field(default_factory=DataConfig)
    """The prepared corpus and how it is cut into batches and windows."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer and the learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop: run directory, length, device, evaluation, stopping and the NaN/inf guard."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How often checkpoints are saved, how many are kept, and resuming."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console lines, the progress bar and TensorBoard."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Several processes: mixed precision, accumulation, DeepSpeed ZeRO, the process group. The processes
    themselves come from the launcher (torchrun, accelerate launch, srun; docs/distributed-and-slurm.md)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """How `elmo-dist submit` runs this config; the trainer ignores it."""

    @staticmethod
    def layers(tree: dict, source: str) -> list[dict]:
        """The model flavour's preset under `tree` (config/base.from_tree)."""
        flavour = (tree.get("model") or {}).get("flavour", ModelConfig.flavour)
        if flavour not in FLAVOURS:
            raise ConfigError(f"{source}: model.flavour '{flavour}' is not one of {', '.join(FLAVOURS)}")
        if (tree.get("dist") or {}).get("mixed_precision") is False:  # `mixed_precision: false` means no
            tree = base.merge_trees(tree, {"dist": {"mixed_precision": "no"}})
        return [{"model": FLAVOURS[flavour]}, tree]

    def validate(self) -> None:
        """Semantic checks that types alone can't express; each names its key."""
        _validate(self)


FLAVOURS: dict[str, dict[str, Any]] = {
    "debug": dict(filters=SMALL_FILTERS, n_highway=0, lstm_dim=256, projection_dim=64),
    "small": dict(filters=FULL_FILTERS, n_highway=1, lstm_dim=1024, projection_dim=128),
    "medium": dict(filters=FULL_FILTERS, n_highway=1, lstm_dim=2048, projection_dim=256),
    "original": dict(filters=FULL_FILTERS, n_highway=2, lstm_dim=4096, projection_dim=512,
                     cell_clip=3.0, proj_clip=3.0, n_negative_samples=8192),
}

# fields that fix the shape of the weights: changing one on resume is refused
ARCH_KEYS = ("encoder", "char_embed_dim", "filters", "max_chars_per_token", "char_vocab_size", "n_highway",
             "word_embed_dim", "char_cnn_word_dim", "lstm_dim", "projection_dim", "n_layers", "softmax",
             "adaptive_cutoffs")


_require = base.require


def _validate_clipped_cell(kernel: str, device: str) -> None:
    if kernel == "triton":
        _require(device != "cpu", "model.clipped_cell", "is triton, which needs CUDA, but train.device is cpu")
        _require(importlib.util.find_spec("triton") is not None, "model.clipped_cell",
                 "is triton, which needs the triton package (pip install triton)")


def _validate(cfg: PretrainConfig) -> None:
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    for key in ("char_embed_dim", "max_chars_per_token", "lstm_dim", "projection_dim", "n_layers",
                "word_embed_dim", "n_negative_samples"):
        _require(getattr(m, key) > 0, f"model.{key}", f"must be positive, got {getattr(m, key)}")
    _require(m.max_chars_per_token >= 3, "model.max_chars_per_token", "must be at least 3")
    _require(m.n_highway >= 0, "model.n_highway", "must be >= 0")
    for key in ("char_vocab_size", "char_cnn_word_dim"):
        _require(getattr(m, key) >= 0, f"model.{key}", f"must be >= 0, got {getattr(m, key)}")
    _require(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    for key in ("cell_clip", "proj_clip"):
        v = getattr(m, key)
        _require(v is None or v > 0, f"model.{key}", f"must be positive or null, got {v}")
    _validate_clipped_cell(m.clipped_cell, t.device)
    _require(all(isinstance(f, list) and len(f) == 2 and min(f) > 0 for f in m.filters), "model.filters",
             "must be a list of [width, count] pairs of positive integers")
    for key in ("batch_size", "unroll_steps", "eval_batch_size"):
        _require(getattr(d, key) > 0, f"data.{key}", f"must be positive, got {getattr(d, key)}")
    for key in ("max_eval_tokens", "eval_context_tokens"):
        _require(getattr(d, key) >= 0, f"data.{key}", f"must be >= 0, got {getattr(d, key)}")
    _require(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _require(o.warmup_steps >= 0 and o.grad_clip >= 0, "optim.warmup_steps", "and optim.grad_clip must be >= 0")
    _require(t.max_steps > 0, "train.max_steps", f"must be positive, got {t.max_steps}")
    _require(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    _require(t.deadline_margin_s >= 0, "train.deadline_margin_s", "must be >= 0")
    _require(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    for name in t.stop_signals:
        _require(_is_signal(name), "train.stop_signals", f"has '{name}', which is not a signal name such as USR2")
    _require(cfg.checkpoint.every >= 0, "checkpoint.every", "must be >= 0")
    _require(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
    _require(cfg.logging.log_every > 0, "logging.log_every", "must be positive")
    dist = cfg.dist
    _require(dist.gradient_accumulation_steps >= 1, "dist.gradient_accumulation_steps", "must be >= 1")
    validate_process_group(dist)
    _require(dist.offload_optimizer == "none" or dist.zero_stage > 0, "dist.offload_optimizer",
             "needs dist.zero_stage 1, 2 or 3")
    _require(dist.offload_params == "none" or dist.zero_stage == 3, "dist.offload_params", "needs dist.zero_stage 3")
    validate_slurm(cfg.slurm)


def require_byte_chars(m: ModelConfig, command: str) -> None:
    """ConfigError for a char-dictionary model (model.char_vocab_size > 0) where `command` reads the
    prepared corpus's or AllenNLP's UTF-8 byte char ids."""
    _require(m.char_vocab_size == 0, "model.char_vocab_size",
             f"is {m.char_vocab_size}: this model reads a char dictionary (an ELMoForManyLangs import), and "
             f"{command} gives it UTF-8 byte char ids; embed, finetune and the Embedder read it")


def parse_signal(name: str) -> signal.Signals:
    """'USR2', 'SIGUSR2' or '12' -> signal.SIGUSR2; KeyError or ValueError for anything else."""
    name = str(name).upper()
    if name.isdigit():
        return signal.Signals(int(name))
    return signal.Signals[name if name.startswith("SIG") else "SIG" + name]


def _is_signal(name) -> bool:
    try:
        parse_signal(name)
    except (KeyError, ValueError):
        return False
    return True


def arch_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Architecture fields that differ between two model configs, as 'key: old -> new'."""
    return [f"model.{k}: {getattr(a, k)} -> {getattr(b, k)}" for k in ARCH_KEYS if getattr(a, k) != getattr(b, k)]
