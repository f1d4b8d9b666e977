"""The fine-tuning config: which biLM, which data, which layer combination, how to train.

    cfg = load(FinetuneConfig, "configs/finetune.yaml", ["variants=[frozen,scalar_mix]"])

Same rules as the pretraining config (elmo_dist.config.base): defaults <- YAML <- dotted overrides,
unknown keys name the closest valid key. Each key is documented in its field's docstring below;
`configs/reference/finetune.yaml` is generated from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from elmo_dist.config import base
from elmo_dist.config.process_group import ProcessGroupConfig, validate_process_group
from elmo_dist.config.slurm import SlurmConfig, validate_slurm

# the task model without the biLM (no_elmo, the baseline every other row is compared with), then the
# ways of combining the biLM's layers (elmo_dist.model.scalar_mix builds them)
Variant = Literal["no_elmo", "frozen", "scalar_mix", "learned_fn", "top"]
VARIANTS = get_args(Variant)


@dataclass
class BilmSection:
    path: str = "runs/demo/pretrain"
    """The biLM: a pretraining run directory (its newest checkpoint), a checkpoints/step-N directory,
    an `elmo-dist export` or an `import-elmo` directory."""
    trainable: bool = False
    """Fine-tune the biLM too (with bilm.lr; no layer cache then); frozen by default."""
    lr: float = 1e-4
    """Learning rate of the biLM when bilm.trainable is true."""
    cache: bool = True
    """With a frozen biLM, compute every document's layers once, on disk (float16, each document at its
    own length, memory-mapped), and reuse them for all epochs, variants and later runs with the same
    biLM weights, documents, tokenizer and data.max_tokens."""
    cache_dir: str = ""
    """Where layer caches live, one sub-directory per content key; "" = BILM/layer_cache beside the biLM
    (so every fine-tuning of it shares them), or RUN_DIR/layer_cache when that is not writable."""
    batch_size: int = 16
    """Documents per biLM forward pass when computing the layers."""
    sentence_boundaries: bool = True
    """Read every document as `<S> tokens </S>` and drop the two marker positions from the layers, as
    bilm-tf and AllenNLP do (the biLM saw sentences that way in pretraining); false feeds the bare tokens."""


@dataclass
class TaskSection:
    format: Literal["auto", "agnews", "csv", "tsv", "jsonl", "folders", "conll", "conllu"] = "auto"
    """Classification: auto | agnews | csv | tsv | jsonl | folders (one sub-folder per class). Tagging:
    auto | conll (columns, token first, a blank line between sentences) | conllu (Universal
    Dependencies); auto takes conllu for a `.conllu` file and conll otherwise."""
    train: str = ""
    """The training file or folder (required)."""
    valid: str = ""
    """Optional; split off train (stratified, deterministic) when empty."""
    test: str = ""
    """Optional; split off train when empty."""
    text_fields: list = field(default_factory=lambda: ["text"])
    """csv/tsv/jsonl: the columns or fields joined into the text (agnews: title + description)."""
    label_field: str = "label"
    """csv/tsv/jsonl: the label column or field."""
    valid_fraction: float = 0.1
    """Stratified share of train held out for validation when `valid` is empty; in (0, 1)."""
    test_fraction: float = 0.2
    """Stratified share of train held out for testing when `test` is empty; in (0, 1)."""
    split_seed: int = 0
    """Seed of the train/valid/test split: the same seed always gives the same split."""
    max_tokens: int = 0
    """Classification: read at most this many tokens of each document (0 = the whole document)."""
    window_tokens: int = 100
    """Classification: a document is read in pieces, its sentences packed into windows of at most this
    many tokens (a longer sentence is cut), each read as `<S> tokens </S>` like a pretraining line;
    the pieces' layers are concatenated and the classifier pools over the whole document."""
    tag_column: int = -1
    """Tagging, conll: the column that holds the tag (0-based; -1 = the last)."""
    conllu_tag: Literal["upos", "xpos"] = "upos"
    """Tagging, conllu: which tag column to learn."""


@dataclass
class WordsSection:
    dim: int = 128
    """Width of the task model's own word embedding x_k, learned over the task's training words (the
    input is [x_k; ELMo_k], Peters et al. 2018, section 3.3); 0 = no x_k, the biLM's layers alone."""
    min_count: int = 2
    """Training words seen fewer times share the unknown-word vector."""
    max_size: int = 50000
    """At most this many words (the most frequent), besides padding and the unknown word."""
    vectors: str = ""
    """Optional word vectors to start x_k from: a word2vec or GloVe text file (one `word v1 .. vd` line
    per word, dim values; an optional `count dim` header line). Words it lacks start random."""
    trainable: bool = True
    """Train x_k with the task model (false keeps the vectors as loaded)."""


@dataclass
class ClassifierSection:
    variant: Variant = "scalar_mix"
    """no_elmo | frozen | scalar_mix | learned_fn | top (used when `variants` is empty); no_elmo is the
    task model on its own word embedding alone, the baseline the comparison table measures ELMo
    against."""
    encoder: Literal["pool", "bilstm"] = "pool"
    """pool (masked mean+max over tokens) | bilstm (a BiLSTM over the mixed tokens, then pooling)."""
    pooling: Literal["mean", "max", "mean_max"] = "mean_max"
    """mean_max | mean | max."""
    token_dim: int = 512
    """pool encoder: width of the per-token Linear -> ReLU before pooling (0 = pool the mixed layers directly)."""
    hidden_dim: int = 256
    """Hidden width of the MLP head."""
    dropout: float = 0.3
    """Dropout on the token inputs, and inside the MLP (classification) or before the tag scores
    (tagging), in [0, 1)."""
    elmo_dropout: float = 0.5
    """Dropout on ELMo_k before it joins x_k, the paper's regulariser, in [0, 1). With mean pooling,
    token_dim 0 and dropout 0 too, 0 lets the linear mixes read each document's layer means instead
    of every token's layers: the same model, faster (docs/finetuning.md#whole-documents)."""
    elmo_at_output: bool = False
    """Also add ELMo at the task model's output, [h_k; ELMo_k] with a mix of its own (section 3.3):
    before pooling (classification) or before the tag scores (tagging)."""
    crf: bool = False
    """Tagging: decode with a linear-chain CRF over the tag scores (otherwise each token's best tag)."""
    tag_scheme: Literal["auto", "BIO", "IOB1", "BIOES", "none"] = "auto"
    """Tagging: how tags name entities. BIO, IOB1, BIOES: entity-level precision, recall and F1
    (seqeval, conlleval's definition); none: a tag per token (part of speech), token accuracy; auto
    decides from the training tags."""
    bilstm_dim: int = 128
    """encoder bilstm only: LSTM cells per direction."""
    layer_norm: bool = False
    """Scalar mix only: layer-normalise each layer before mixing."""
    mix_l2: float = 0.0
    """Scalar mix only: L2 penalty on the (unnormalised) layer weights."""
    learned_fn_hidden: int = 256
    """learned_fn only: hidden width of the MLP over the concatenated layers."""


@dataclass
class FinetuneOptim:
    lr: float = 1e-3
    """Adam learning rate of the classifier (and the layer mix)."""
    weight_decay: float = 0.0
    """Adam's L2 weight decay on every trained parameter (0 = off)."""
    grad_clip: float = 5.0
    """Global-norm gradient clipping of every trained parameter."""
    warmup_steps: int = 0
    """Linear warmup over this many classifier steps (every parameter group, bilm.lr too)."""
    decay: Literal["none", "linear", "cosine"] = "none"
    """LR decay after warmup: none, linear or cosine, to min_lr_ratio x lr at the last step of train.epochs
    (early stopping may end sooner)."""
    min_lr_ratio: float = 0.0
    """Where decay ends: the learning rate at the last step is min_lr_ratio x lr."""


@dataclass
class FinetuneTrain:
    run_dir: str = "runs/finetune"
    """Outputs: metrics, best weights and TensorBoard events; with `variants`, one RUN_DIR/<variant> each."""
    epochs: int = 30
    """Most epochs to train; early stopping (patience) may end sooner."""
    batch_size: int = 32
    """Documents per classifier training step."""
    patience: int = 5
    """Stop after this many epochs without a better validation score (train.early_stopping); the best
    epoch is kept."""
    early_stopping: Literal["accuracy", "f1_macro", "f1"] = "accuracy"
    """The validation metric that picks the best epoch: accuracy (of documents, or of tokens when
    tagging), f1_macro (classification, for imbalanced classes) or f1 (tagging with B-/I- tags:
    entity-level F1)."""
    class_weights: Literal["none", "balanced"] = "none"
    """none, or balanced: weight each class's loss by n_samples / (n_classes x its count), as
    scikit-learn's 'balanced', so that small classes are not ignored."""
    seed: int = 0
    """Weights, batch order and dropout follow it: the same seed gives the same result."""
    seeds: list = field(default_factory=list)
    """Run every variant once per seed (e.g. [0, 1, 2]) and report mean +- standard deviation; empty =
    train.seed only. With several seeds each run goes to <variant>/seed-<s>/."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (CUDA when present), cpu or cuda."""


@dataclass
class FinetuneDist(ProcessGroupConfig):
    """Fine-tuning's `dist` section: only the process-group keys (config/group.py)."""


@dataclass
class FinetuneConfig:
    bilm: BilmSection = field(default_factory=BilmSection)
    """The pretrained biLM the classifier reads, and whether it is trained too."""
    data: TaskSection = field(default_factory=TaskSection)
    """The labelled documents: format, files and the train/valid/test split."""
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    """The classifier head over the biLM's layers."""
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    """The Adam optimizer of the classifier."""
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    """The fine-tuning loop: output directory, epochs, early stopping, seeds and device."""
    dist: FinetuneDist = field(default_factory=FinetuneDist)
    """Several processes (torchrun --nproc_per_node N -m elmo_dist finetune ...): data parallel, the same
    result as one process with the same global batch (train.batch_size)."""
    task: Literal["classification", "tagging"] = "classification"
    """classification: one label per document (csv, jsonl, folders, ...); tagging: one tag per token
    of each sentence (CoNLL, CoNLL-U), e.g. part of speech or named entities."""
    words: WordsSection = field(default_factory=WordsSection)
    """The task model's own token representation x_k."""
    variants: list = field(default_factory=list)
    """Run these variants one after the other, each in RUN_DIR/<variant>, and compare them.
    Empty: train only classifier.variant, with its outputs in RUN_DIR itself."""
    baseline: bool = True
    """Classification: add a TF-IDF + logistic-regression row, trained and tested on the same split."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """How `elmo-dist submit finetune` runs this config (one array task per variant)."""

    def validate(self) -> None:
        """Semantic checks that types alone can't express; each names its key."""
        _validate(self)


_require = base.require


def _validate(cfg: FinetuneConfig) -> None:
    for v in cfg.variants or [cfg.classifier.variant]:
        _require(v in VARIANTS, "variants" if cfg.variants else "classifier.variant",
                 f"has '{v}', expected one of {', '.join(VARIANTS)}")
    _require(0 <= cfg.classifier.dropout < 1, "classifier.dropout", "must be in [0, 1)")
    _require(bool(cfg.data.train), "data.train", "must name the training file or folder")
    _require(cfg.data.max_tokens >= 0, "data.max_tokens", "must be >= 0 (0 = whole documents)")
    _require(cfg.data.window_tokens > 0, "data.window_tokens", "must be positive")
    _require(0 <= cfg.classifier.elmo_dropout < 1, "classifier.elmo_dropout", "must be in [0, 1)")
    for key in ("dim", "min_count", "max_size"):
        _require(getattr(cfg.words, key) >= 0, f"words.{key}", "must be >= 0")
    tagging = cfg.task == "tagging"
    formats = ("auto", "conll", "conllu") if tagging else ("auto", "agnews", "csv", "tsv", "jsonl", "folders")
    _require(cfg.data.format in formats, "data.format", f"must be one of {', '.join(formats)} for task {cfg.task}")
    stops = ("accuracy", "f1") if tagging else ("accuracy", "f1_macro")
    _require(cfg.train.early_stopping in stops, "train.early_stopping",
             f"must be one of {', '.join(stops)} for task {cfg.task}")
    _require(not cfg.classifier.crf or tagging, "classifier.crf", "applies to task tagging only")
    if not cfg.words.dim:
        _require("no_elmo" not in (cfg.variants or [cfg.classifier.variant]), "words.dim",
                 "is 0, so the no_elmo variant would have no input at all")
    _require(cfg.words.vectors == "" or cfg.words.dim > 0, "words.vectors", "needs words.dim > 0")
    _require(0 < cfg.data.valid_fraction < 1 and 0 < cfg.data.test_fraction < 1, "data.valid_fraction",
             "and data.test_fraction must be in (0, 1)")
    for key in ("epochs", "batch_size", "patience"):
        _require(getattr(cfg.train, key) > 0, f"train.{key}", "must be positive")
    _require(all(isinstance(s, int) for s in cfg.train.seeds) and len(set(cfg.train.seeds)) == len(cfg.train.seeds),
             "train.seeds", f"must be a list of distinct integers, got {cfg.train.seeds}")
    validate_process_group(cfg.dist)
    _require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    _require(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _require(cfg.optim.lr > 0 and cfg.bilm.lr > 0, "optim.lr", "and bilm.lr must be positive")
    _require(cfg.bilm.batch_size > 0, "bilm.batch_size", "must be positive")
    validate_slurm(cfg.slurm)


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
    tree = base.to_container(cfg)
    tree = base.merge_trees(tree, {"variants": [], "classifier": {"variant": variant},
                                        "train": {"run_dir": str(Path(cfg.train.run_dir) / variant)}})
    return base.from_tree(FinetuneConfig, tree)
