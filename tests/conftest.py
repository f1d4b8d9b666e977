"""Shared test helpers: a generated corpus with learnable structure, and a CLI runner."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Without CUDA, Triton kernels (the clipped cell's) run under Triton's interpreter. Triton reads the
# setting when it is first imported, which no test has done yet when this file loads; subprocesses
# inherit it. With CUDA it stays unset, and tests/gpu/ runs the kernels compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

def pytest_collection_modifyitems(items):
    """The slowest files first. `make test` runs each file whole on one of two workers (pytest -n 2
    --dist loadfile --no-loadscope-reorder), handing out files in collection order: starting the long
    ones first keeps one worker from being left alone with a long file at the end. A slow file says
    so itself, `pytestmark = pytest.mark.slow(seconds=N)` (its serial time, measured); a stale
    figure costs only time."""
    seconds: dict[str, float] = {}
    for item in items:
        mark = next((m for m in item.iter_markers("slow") if "seconds" in m.kwargs), None)
        seconds[item.fspath] = max(seconds.get(item.fspath, 0), mark.kwargs["seconds"] if mark else 0)
    items.sort(key=lambda item: -seconds[item.fspath])  # stable: files stay whole and in order among equals


def write_grammar_corpus(path: Path, n_lines: int, seed: int = 0) -> Path:
    """Sentences from a small grammar: the next word is predictable, the unigram model is not."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "the old man", "my friend", "the bird", "a small child", "the teacher"]
    verb = ["sees", "likes", "eats", "finds", "wants", "hears", "paints"]
    obj = ["the fish", "a red ball", "the tall tree", "some bread", "the house", "a book", "the river"]
    tail = ["today", "quickly", "again", "at night", "very slowly", "in the morning"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            s = f"{subj[rng.integers(7)]} {verb[rng.integers(7)]} {obj[rng.integers(7)]}"
            if rng.random() < 0.6:
                s += " " + tail[rng.integers(6)]
            f.write(s + " .\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None):
    """Run `python -m elmo_dist ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "elmo_dist", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"elmo-dist {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def prepare_grammar(d: Path, lines: int) -> Path:
    """`lines` grammar lines written to D/corpus.txt and prepared (5% held out) into D/prepared."""
    write_grammar_corpus(d / "corpus.txt", lines)
    run_cli("prepare", str(d / "corpus.txt"), "--out", str(d / "prepared"), "--heldout-fraction", "0.05")
    return d / "prepared"


@pytest.fixture(scope="session")
def grammar_corpus(tmp_path_factory) -> Path:
    """A prepared corpus (about 60k words) shared by the integration tests."""
    return prepare_grammar(tmp_path_factory.mktemp("grammar"), 12000)


TINY_OVERRIDES = [
    "model.lstm_dim=64", "model.projection_dim=32", "model.filters=[[1,8],[2,8],[3,16]]",
    "model.n_negative_samples=16", "data.batch_size=16", "data.unroll_steps=10",
    "data.eval_batch_size=32", "train.device=cpu", "logging.log_every=10",
]


# Float tolerances are derived, never tuned to one CPU: float64 for the math, and for float32 the
# bounds below. Two float32 computations of the same value done differently (batches of other
# shapes, other threads, other CPUs' kernels, several processes) may each be off by n roundings of
# relative size u = EPS32 / 2 on values of magnitude <= scale (the standard n*u bound for a sum of n
# products), so they differ by at most EPS32 * scale * n: n counts the roundings along the deepest path.
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7


def f32_bound(scale: float, steps: int, m, extra_terms: int = 0) -> float:
    """The float32 bound for a biLM's layers over `steps` time steps (m: its ModelConfig). n: the char
    CNN (widest filter x char dim, then n_filters per highway layer and for the projection), then per
    LSTM layer and step the gates' sum over input + projection and the projection's sum over the
    cells, the recurrence carrying each step's roundings to the last; plus `extra_terms` (a softmax)."""
    n_f = sum(n for _, n in m.filters)
    cnn = max(w for w, _ in m.filters) * m.char_embed_dim + (m.n_highway + 1) * n_f
    lstm = m.n_layers * steps * (2 * m.projection_dim + m.lstm_dim)
    return EPS32 * scale * (cnn + lstm + extra_terms)


def ppl_rtol(ppl: float, m, unroll: int, lanes: int, vocab_size: int) -> float:
    """The float32 bound on |ppl_a / ppl_b - 1| = |difference of the mean NLLs| for one model's held-out
    perplexity computed two ways: each token's NLL within the bound for the NLL's scale (log ppl) over
    one window of `unroll` steps (earlier windows' roundings come in through the forget gate, < 1, and
    are not counted again), the softmax's projection_dim-term logits, its log-sum-exp over the
    vocabulary and the float32 sum over a batch's lanes x unroll tokens."""
    return f32_bound(math.log(ppl), unroll, m, extra_terms=m.projection_dim + vocab_size + lanes * unroll)


def adagrad_f32_atol(run: Path, step: int, rows: int) -> dict[str, torch.Tensor]:
    """Per weight of `run`'s checkpoint `step`: the float32 bound on |w_a - w_b| for the same Adagrad
    training (initial accumulator 1, ELMo's; `rows` rows a step in all) done with sums in other orders
    (one process against several, accumulation, ZeRO's flattened buffers).

    Each gradient is within eps = EPS32 x n of itself, relative to its size: n is the batch's rows x
    unroll positions, back through time per layer and step the 4 x lstm_dim-, lstm_dim- and
    2 x projection_dim-term products, and the forward's roundings (f32_bound's count, the softmax's
    logits and log-sum-exp). A step lr g_k / sqrt(acc_k), a ratio of the gradient and its running sum
    of squares, then moves by at most 2 eps of itself; and since acc_k >= 1 the steps add up to at most
    lr sum_k |g_k| <= lr sqrt(K (acc - 1)) (Cauchy-Schwarz over the K steps, acc - 1 = sum_k g_k^2: the
    checkpoint's accumulator). Each w - step may also round one ulp apart (EPS32 |w|). First order: the
    later gradients, taken on weights that differ by this little, differ as little."""
    from safetensors.torch import load_file

    from elmo_dist.runs import open_run

    saved = open_run(run)
    cfg, vocab_size = saved.config, len(saved.vocab())
    m, unroll, lr = cfg.model, cfg.data.unroll_steps, cfg.optim.lr
    assert cfg.optim.name == "adagrad" and cfg.optim.adagrad_init_acc == 1.0
    back = rows * unroll + m.n_layers * unroll * (5 * m.lstm_dim + 2 * m.projection_dim)
    eps = EPS32 * back + f32_bound(1.0, unroll, m, extra_terms=m.projection_dim + vocab_size)
    names = [name for name, _ in saved.build_model("cpu", vocab_size).named_parameters()]
    ckpt = run / "checkpoints" / f"step-{step}"
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)["state"]  # indexed as model.parameters()
    weights = load_file(str(ckpt / "model.safetensors"))
    out = {}
    for i, name in enumerate(names):
        acc, w = state[i]["sum"], weights[name]
        assert acc.shape == w.shape, name
        path = lr * torch.sqrt(step * (acc - 1).clamp(min=0))  # how far the steps carried the weight, at most
        out[name] = 2 * eps * path + step * EPS32 * (w.abs() + path)
    return out


def finetune_f32_bounds(bilm_run: Path, weights: dict, steps: int, variant: str, trainable: bool,
                        n_docs: int, word_dim: int) -> tuple[float, float]:
    """(atol on each weight, rtol on a split's loss) for the same fine-tuning of order-task documents
    (<= 9 words; Adam at lr 1e-3 for the head and the biLM; batches of 10; `weights`: one run's result)
    done with sums in another order (one process against several).

    Weights: each gradient is within EPS32 x n of itself, relative to its size: n is the batch's positions (10
    documents x 11 with <S> and </S>), twice (forward and back) the head's products (the mix, the token
    projection from [x_k; ELMo_k], word_dim + 2 x projection_dim wide, the pooled mean and max, the hidden
    layer, the two classes; learned_fn's MLP over all layers) and, trainable, the biLM's forward (f32_bound's
    count) and its way back through time. Adam's step, a ratio of the gradient's moments, is at most (1 - b1) /
    sqrt(1 - b2) = 3.2 lr and moves by at most twice that relative error; w - step may then round one ulp apart
    (EPS32 |w|, |w| <= its end value + steps x 3.2 lr). First order over the steps.
    Loss, the mean cross-entropy: first order, the weights' relative difference (atol over their RMS)
    moves it as much, relative; plus the evaluation's own rounding (the biLM's forward, the head's
    products, the mean over n_docs documents)."""
    from elmo_dist.runs import open_run

    m, lr, words = open_run(bilm_run).config.model, 1e-3, 11
    d = 2 * m.projection_dim
    head = (m.n_layers + 1) + word_dim + d + 2 * 16 + 16 + 2 + ((m.n_layers + 1) * d + 256 if variant == "learned_fn"
                                                                else 0)
    bilm = f32_bound(1.0, words, m) / EPS32
    n = 10 * words + 2 * head + ((bilm + m.n_layers * words * (5 * m.lstm_dim + 2 * m.projection_dim)) if trainable
                                 else 0)
    w_max = max(float(w.abs().max()) for w in weights.values()) + steps * 3.2 * lr
    atol = EPS32 * steps * (2 * 3.2 * lr * n + w_max)
    rms = math.sqrt(sum(float(w.double().pow(2).sum()) for w in weights.values())
                    / sum(w.numel() for w in weights.values()))
    return atol, atol / rms + EPS32 * (bilm + head + n_docs)


def write_tagged(path: Path, n: int, seed: int) -> Path:
    """POS-like tags where the word alone is ambiguous: 'saw' is a NOUN after 'the' and a VERB after a
    name, 'can' a VERB after a name and a NOUN after 'a' (context decides, as in real tagging)."""
    rng = np.random.default_rng(seed)
    names, nouns = ["anna", "bob", "carl"], ["saw", "can", "book", "ship"]
    with open(path, "w") as f:
        for _ in range(n):
            if rng.random() < 0.5:
                words = [(names[rng.integers(3)], "PROPN"), (["saw", "can"][rng.integers(2)], "VERB"),
                         ("the", "DET"), (nouns[rng.integers(4)], "NOUN")]
            else:
                words = [("the", "DET"), (nouns[rng.integers(4)], "NOUN"), ("is", "VERB"), ("here", "ADV")]
            f.write("".join(f"{w}\tX\t{t}\n" for w, t in words + [(".", "PUNCT")]) + "\n")
    return path


def best_weights(variant_dir: Path) -> dict:
    """A fine-tuned variant's best weights: its newest (only) checkpoint's model.safetensors."""
    from safetensors.torch import load_file

    from elmo_dist.runs import find_latest

    return load_file(str(find_latest(variant_dir) / "model.safetensors"))


def pretrain_args(run: Path, data: Path, *extra: str) -> list[str]:
    """`elmo-dist pretrain` arguments for a tiny run with no evaluation until the end."""
    return ["pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={data}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.eval_every=0", *extra]


def one_error_line(proc) -> str:
    """The single `elmo-dist: error:` line of a refused command (exit status 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("elmo-dist: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="session")
def tiny_bilm(tmp_path_factory, grammar_corpus) -> Path:
    """A tiny biLM pretrained on the grammar corpus, shared by the downstream tests."""
    run = tmp_path_factory.mktemp("bilm") / "run"
    run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}", f"train.run_dir={run}",
            *TINY_OVERRIDES, "train.max_steps=120", "train.eval_every=0", "optim.name=adam", "optim.lr=0.01")
    return run


ANIMALS = ["cat", "dog", "bird", "fish"]


def order_task_sentence(rng, first: str, second: str) -> str:
    """'the cat sees the fish ...': the label is which animal comes first, so the bag of words
    says nothing and only context (word order) decides."""
    verbs = ["sees", "likes", "finds", "hears"]
    tail = ["today", "again", "at night", "quickly"]
    return f"the {first} {verbs[rng.integers(4)]} the {second} {tail[rng.integers(4)]} ."


def write_order_task(path, n, seed):
    """A JSONL task: label = which of two animals is the subject (same words in both classes)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = ("cat", "fish") if rng.random() < 0.5 else ("fish", "cat")
            f.write(json.dumps({"text": order_task_sentence(rng, a, b), "label": f"{a}_first"}) + "\n")
    return path
