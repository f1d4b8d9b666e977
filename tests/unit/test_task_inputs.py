"""What a task model reads: whole documents cut into sentence windows, the task vocabulary for x_k and
word vectors to start it from, and the [x_k; ELMo_k] input itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elmo_dist.classify.inputs import windows
from elmo_dist.classify.words import PAD, UNK, TaskVocab, load_vectors
from elmo_dist.errors import DataError
from elmo_dist.model.scalar_mix import build_mix
from elmo_dist.model.task import Classifier, Tagger, TokenInputs


def test_windows_keep_sentences_whole_cut_long_ones_and_cover_every_token_in_order():
    tokens = "a b . c d e ! f g h i j k l ? m".split()
    pieces = windows(tokens, 5)
    assert [t for p in pieces for t in p] == tokens
    assert pieces == [["a", "b", "."], ["c", "d", "e", "!"], ["f", "g", "h", "i", "j"], ["k", "l", "?", "m"]]
    assert all(len(p) <= 5 for p in pieces)
    assert windows("x y . z .".split(), 100) == [["x", "y", ".", "z", "."]]  # short sentences share a window
    assert windows([], 10) == [["<UNK>"]]


def test_task_vocabulary_counts_training_words_only_and_reproducibly():
    vocab = TaskVocab.build([["b", "a", "b", "c"], ["a", "b", "d"]], min_count=2, max_size=10)
    assert vocab.words == ["<pad>", "<unk>", "b", "a"]  # by count, then alphabetical; c and d seen once
    assert vocab.encode(["a", "zzz", "b"]).tolist() == [3, UNK, 2]
    assert TaskVocab.build([["x", "y", "y", "z", "z", "z"]], 1, 2).words == ["<pad>", "<unk>", "z", "y"]


def test_word_vectors_load_word2vec_and_glove_text_and_name_bad_lines(tmp_path):
    vocab = TaskVocab(["<pad>", "<unk>", "cat", "dog", "emu"])
    glove = tmp_path / "g.txt"
    glove.write_text("cat 1 2 3\nowl 9 9 9\ndog 4 5 6\ncat 7 7 7\n")
    table, found = load_vectors(glove, vocab, 3)
    assert found == 2 and table.shape == (5, 3)
    assert table[2].tolist() == [1, 2, 3] and table[3].tolist() == [4, 5, 6]  # the first line of a word wins
    assert table[PAD].abs().sum() == 0 and table[4].abs().sum() > 0  # emu: random, padding zero
    w2v = tmp_path / "w.txt"
    w2v.write_text("2 3\ncat 1 2 3\ndog 4 5 6\n")
    assert load_vectors(w2v, vocab, 3)[1] == 2
    for text, where, what in (("cat 1 2\n", ":1:", "2 values"), ("cat 1 2 3\ndog 1 x 3\n", ":2:", "not a number"),
                              ("2 5\ncat 1 2 3\n", ":1:", "5 dimensions"), ("owl 1 2 3\n", "", "none of")):
        glove.write_text(text)
        with pytest.raises(DataError, match=f"{glove}{where}.*{what}"):
            load_vectors(glove, vocab, 3)


def test_the_input_is_words_then_elmo_and_no_elmo_reads_no_layer():
    torch.manual_seed(0)
    ids, layers, mask = torch.tensor([[2, 3, 0]]), torch.randn(1, 3, 3, 8), torch.tensor([[True, True, False]])
    both = TokenInputs(5, 4, build_mix("frozen", 3, 8), 8).eval()
    x = both(ids, layers, mask)
    assert x.shape == (1, 3, 12)
    assert torch.equal(x[..., :4], both.words(ids)) and torch.allclose(x[..., 4:], layers.mean(1))
    words_only = TokenInputs(5, 4)
    assert words_only(ids, None, mask).shape == (1, 3, 4)  # no layers needed at all
    with pytest.raises(ValueError, match="needs word vectors"):
        TokenInputs(5, 0)


@pytest.mark.parametrize("crf", [False, True])
def test_task_models_take_words_and_layers_and_give_their_outputs(crf):
    torch.manual_seed(0)
    ids, layers = torch.randint(1, 5, (2, 6)), torch.randn(2, 3, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    clf = Classifier(TokenInputs(5, 4, build_mix("scalar_mix", 3, 8), 8), 3, token_dim=16, hidden=8,
                     output_mix=build_mix("scalar_mix", 3, 8), elmo_dim=8)
    assert clf(ids, layers, mask).shape == (2, 3)
    tagger = Tagger(TokenInputs(5, 4, build_mix("top", 3, 8), 8), 7, bilstm_dim=6, crf=crf)
    emissions = tagger(ids, layers, mask)
    assert emissions.shape == (2, 6, 7)
    paths = tagger.decode(emissions, mask)
    assert [len(p) for p in paths] == [6, 3]
    tags = torch.where(mask, torch.randint(0, 7, (2, 6)), torch.full((2, 6), -100))
    loss = tagger.loss(emissions, tags, mask)
    loss.backward()
    assert loss.ndim == 0 and np.isfinite(float(loss.detach()))


def test_a_tag_only_the_test_file_holds_is_kept_and_warned_about(caplog):
    """Real sets hold such tags (Brown's `dt$` occurs once, outside the training files): the run goes on,
    the tag gets an index after the training tags, and the warning names it and its count."""
    from types import SimpleNamespace

    from elmo_dist.classify.conll import TaggedSet
    from elmo_dist.classify.inputs import tagging_data

    def tagged(sentences, tags):
        return TaggedSet(sentences, tags, "x.conll", {})

    sets = {"train": tagged([["the", "cat"], ["a", "dog"]], [["DET", "NOUN"], ["DET", "NOUN"]]),
            "valid": tagged([["the", "dog"]], [["DET", "NOUN"]]),
            "test": tagged([["all", "cats"], ["both", "dogs"]], [["ABX", "NOUN"], ["ABX", "NOUN"]])}
    cfg = SimpleNamespace(words=SimpleNamespace(min_count=1, max_size=100))
    with caplog.at_level("WARNING", logger="elmo_dist"):
        data = tagging_data(cfg, sets)
    assert data.names == ["DET", "NOUN", "ABX"]
    assert [t.tolist() for t in data.targets["test"]] == [[2, 1], [2, 1]]
    assert "ABX x2" in caplog.text and "count as errors" in caplog.text


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_is_inverted_dropout_with_the_rate_asked_for(p):
    """The task model's CPU dropout: each element zeroed with probability p (the count within 5 standard
    deviations of the binomial's mean), the rest scaled by exactly 1 / (1 - p), the gradient through the
    same mask; evaluation and p = 0 pass the input unchanged."""
    from elmo_dist.model.task import Dropout

    torch.manual_seed(0)
    n = 200_000
    x = (torch.rand(n, dtype=torch.float64) + 1).requires_grad_()  # no zero of its own
    drop = Dropout(p)
    y = drop(x)
    zeroed = int((y == 0).sum())
    assert abs(zeroed - n * p) <= 5 * (n * p * (1 - p)) ** 0.5
    kept = y != 0
    assert torch.equal(y[kept], x.detach()[kept] * (1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, kept.double() * (1 / (1 - p)))
    assert drop(x).ne(y).any()  # a new mask each call
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x


@pytest.mark.parametrize("pooling", ["mean_max", "mean", "max"])
def test_a_head_without_a_per_token_layer_pools_the_concatenation(pooling):
    """With no per-token layer and no BiLSTM, the classifier pools x_k, ELMo_k and the output ELMo
    one by one; the vector must be masked_pool of their concatenation, in the same feature order
    (float64: the same sums in another grouping, a few roundings of 1e-16 apart)."""
    from elmo_dist.model.task import masked_pool

    torch.manual_seed(0)
    inputs = TokenInputs(30, 6, build_mix("scalar_mix", 3, 4), 4, elmo_dropout=0.5)
    out_mix = build_mix("learned_fn", 3, 4, hidden=5)
    clf = Classifier(inputs, 3, pooling=pooling, token_dim=0, hidden=8, output_mix=out_mix, elmo_dim=4,
                     elmo_dropout=0.5).double().eval()
    ids, layers = torch.randint(1, 30, (2, 7)), torch.randn(2, 3, 7, 4, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    joined = torch.cat([inputs(ids, layers, mask), clf.output.mix(layers, mask)], dim=-1)
    expected = clf.mlp(masked_pool(joined, mask, pooling))
    torch.testing.assert_close(clf(ids, layers, mask), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["frozen", "scalar_mix", "top"])
@pytest.mark.parametrize("at_output", [False, True])
def test_an_averaging_head_gives_the_same_logits_from_the_layer_means(variant, at_output):
    """Mean pooling of linear mixes with nothing per token in between: the logits from each document's
    layer means [B, L+1, D] equal those from every token's layers, and so do the mix's gradients
    (float64: the same sums in another order, roundings of 1e-16)."""
    torch.manual_seed(0)
    inputs = TokenInputs(30, 6, build_mix(variant, 3, 4), 4, elmo_dropout=0.0)
    if variant == "scalar_mix":
        inputs.mix.weights.data = torch.tensor([0.3, -1.0, 0.5])
    out_mix = build_mix(variant, 3, 4) if at_output else None
    clf = Classifier(inputs, 3, pooling="mean", token_dim=0, hidden=8, dropout=0.0, output_mix=out_mix,
                     elmo_dim=4).double()
    assert clf.reads_layer_means
    ids, layers = torch.randint(1, 30, (2, 7)), torch.randn(2, 3, 7, 4, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    layers[1, :, 4:] = 1e3  # padding: must not count in either path
    m = mask[:, None, :, None].double()
    means = (layers * m).sum(2) / m.sum(2)
    per_token = clf(ids, layers, mask)
    torch.testing.assert_close(clf(ids, means, mask), per_token, rtol=0, atol=1e-12)
    if variant == "scalar_mix":
        grad_tokens = torch.autograd.grad(per_token.sum(), inputs.mix.weights)[0]
        grad_means = torch.autograd.grad(clf(ids, means, mask).sum(), inputs.mix.weights)[0]
        torch.testing.assert_close(grad_means, grad_tokens, rtol=0, atol=1e-12)


@pytest.mark.parametrize("change", ["dropout", "elmo_dropout", "learned_fn", "layer_norm", "token_dim", "mean_max"])
def test_a_head_that_works_per_token_refuses_layer_means(change):
    """Anything per token between the layers and the pooling (dropout, a nonlinear or normalising mix,
    a per-token layer, max pooling) breaks the identity: such a head reads every token's layers."""
    variant = "learned_fn" if change == "learned_fn" else "scalar_mix"
    mix = build_mix(variant, 3, 4, layer_norm=change == "layer_norm", hidden=5)
    inputs = TokenInputs(30, 6, mix, 4, elmo_dropout=0.5 if change == "elmo_dropout" else 0.0)
    clf = Classifier(inputs, 3, pooling="mean_max" if change == "mean_max" else "mean",
                     token_dim=8 if change == "token_dim" else 0, hidden=8,
                     dropout=0.3 if change == "dropout" else 0.0)
    assert not clf.reads_layer_means
    with pytest.raises(ValueError, match="per-token layers"):
        clf(torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 3, 4), torch.ones(1, 2, dtype=torch.bool))
