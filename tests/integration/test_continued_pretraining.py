"""Continued pretraining on a corpus with another vocabulary (`train.init_from`): every weight is
kept, and the softmax rows of the words both vocabularies spell alike, so that a model moved to a
new domain starts from what it knew."""
from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY_OVERRIDES, run_cli, write_grammar_corpus

pytestmark = pytest.mark.slow(seconds=40)  # its serial seconds: conftest starts the slowest first


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """The grammar corpus's sentences (other draws) plus sentences of words it never had: most words
    shared, the vocabulary another (other size, other ids)."""
    d = tmp_path_factory.mktemp("other")
    text = write_grammar_corpus(d / "corpus.txt", 3000, seed=7).read_text()
    extra = "".join(f"the {a} {v} a {b} .\n" for a in ("zebra", "canoe", "wizard") for v in ("paints", "sees")
                    for b in ("lantern", "meadow"))
    (d / "corpus.txt").write_text(text + extra * 200)  # frequent: the new words take early ids
    run_cli("prepare", str(d / "corpus.txt"), "--out", str(d / "prepared"), "--heldout-fraction", "0.05")
    return d / "prepared"


@pytest.fixture(scope="module")
def imported(tiny_bilm, tmp_path_factory):
    """The tiny biLM through the official format and back, with its vocabulary and softmax (as
    `import-elmo --vocab --softmax` reads bilm-tf's released files)."""
    d = tmp_path_factory.mktemp("official")
    run_cli("export-elmo", str(tiny_bilm), str(d / "elmo"))
    run_cli("import-elmo", str(d / "elmo" / "options.json"), str(d / "elmo" / "weights.hdf5"), str(d / "imported"),
            "--vocab", str(d / "elmo" / "vocab.txt"), "--softmax", str(d / "elmo" / "softmax.hdf5"))
    return d / "imported"


def first_loss(run) -> float:
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    return next(e.value for e in ea.Scalars("train/loss_fwd") if e.step == 1)


@pytest.mark.parametrize("kind", ["run", "import"])
def test_shared_words_keep_their_softmax_rows_and_new_words_start_fresh(kind, tiny_bilm, imported, other_corpus):
    from elmo_dist.data.vocab import Vocabulary
    from elmo_dist.model import build_bilm
    from elmo_dist.runs import open_run
    from elmo_dist.train.warm_start import warm_start

    path = tiny_bilm if kind == "run" else imported
    source = open_run(path)
    vocab = Vocabulary.load(other_corpus / "vocab.txt")
    assert vocab.tokens != source.vocab().tokens
    torch.manual_seed(0)
    model = build_bilm(source.config.model, len(vocab))  # what a new run on the other corpus starts as
    fresh = {k: v.clone() for k, v in model.softmax.state_dict().items()}
    line = warm_start(model, source.config, vocab, str(path))
    old = {w: i for i, w in enumerate(source.vocab().tokens)}
    weights = source.weights()
    shared = [(i, old[w]) for i, w in enumerate(vocab.tokens) if w in old]
    new = [i for i, w in enumerate(vocab.tokens) if w not in old]
    assert sorted(vocab.tokens[i] for i in new) == ["canoe", "lantern", "meadow", "wizard", "zebra"]
    assert sum(i != j for i, j in shared) > 20  # the shared words sit at other ids: carried by spelling
    assert f"softmax rows of {len(shared):,} of {len(vocab):,}" in line
    for i, j in shared:  # exactly the source's rows
        assert torch.equal(model.softmax.weight[i], weights["softmax.weight"][j])
        assert torch.equal(model.softmax.bias[i], weights["softmax.bias"][j])
    for i in new:  # the model's own initialisation
        assert torch.equal(model.softmax.weight[i], fresh["weight"][i])
    for name, tensor in model.state_dict().items():  # and every other weight is the source's
        if not name.startswith("softmax."):
            assert torch.equal(tensor, weights[name]), name


def test_the_first_step_on_the_new_corpus_starts_far_below_a_fresh_model(tiny_bilm, other_corpus, tmp_path):
    args = ["pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={other_corpus}", *TINY_OVERRIDES,
            "train.max_steps=1", "train.eval_every=0", "logging.log_every=1", "optim.name=adam", "optim.lr=0.01"]
    proc = run_cli(*args, f"train.run_dir={tmp_path / 'warm'}", f"train.init_from={tiny_bilm}")
    assert "words carried over" in proc.stderr
    run_cli(*args, f"train.run_dir={tmp_path / 'fresh'}")
    warm, fresh = first_loss(tmp_path / "warm"), first_loss(tmp_path / "fresh")
    print(f"\nloss of the first step: carried over {warm:.3f}, fresh {fresh:.3f}")
    assert warm < 0.6 * fresh
