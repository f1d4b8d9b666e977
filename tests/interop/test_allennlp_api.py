"""AllenNLP's ELMo API (`from elmo_dist import Elmo, batch_to_ids`): its three-line usage on an
official-format file (tests/interop/test_elmo_format.py's `write_official`) gives the layers of the
independent NumPy computation of the TF-convention math (`reference_with_boundaries`), mixed as
AllenNLP's ScalarMix mixes them; masks, dropout, gradients, the char ids and the other ways in (a run
directory, an import, `vocab_to_cache`) as AllenNLP documents them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elmo_dist import Elmo, batch_to_ids
from elmo_dist.commands import import_elmo
from elmo_dist.embedder import Embedder
from elmo_dist.errors import ConfigError, DataError

from conftest import f32_bound
from test_elmo_format import F64_TOL, OFFICIAL, SENTENCES, reference_layers, reference_with_boundaries, write_official

pytestmark = pytest.mark.slow(seconds=15)

PINNED = [1.0, -0.5, 2.0]  # pre-softmax, as AllenNLP's scalar_mix_parameters


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    weights = write_official(d, np.random.default_rng(0))
    return str(d / "options.json"), str(d / "weights.hdf5"), weights


def softmax(w):
    e = np.exp(np.asarray(w, dtype=np.float64) - max(w))
    return e / e.sum()


def mix(layers, params=(0.0, 0.0, 0.0)):
    """ScalarMix with gamma 1: sum_k softmax(params)_k * layer_k, over axis 0."""
    return np.einsum("k,k...->...", softmax(params), layers)


def run64(elmo, sentences=SENTENCES):
    out = elmo.double()(batch_to_ids(sentences))
    return [r.detach().numpy() for r in out["elmo_representations"]], out["mask"].numpy()


def max_diff(reps, want):
    """Largest |diff| over the real tokens, and the largest |value| on padding (must be 0)."""
    diff = max(float(np.abs(reps[b, : len(w)] - w).max()) for b, w in enumerate(want))
    pad = max(float(np.abs(reps[b, len(w):]).max(initial=0)) for b, w in enumerate(want))
    return diff, pad


def test_allennlps_three_lines_with_only_the_import_changed(files):
    options_file, weight_file, weights = files
    sentences = SENTENCES
    # -- AllenNLP's usage, `from allennlp.modules.elmo import Elmo, batch_to_ids` replaced --
    elmo = Elmo(options_file, weight_file, num_output_representations=2, dropout=0.5)
    out = elmo(batch_to_ids(sentences))
    # --
    reps, mask = out["elmo_representations"], out["mask"]
    assert len(reps) == 2 and all(r.shape == (3, 7, 12) and r.dtype == torch.float32 for r in reps)
    assert mask.dtype == torch.bool and mask.tolist() == [[i < len(s) for i in range(7)] for s in sentences]
    want = [mix(reference_with_boundaries(weights, s)) for s in sentences]
    scale, steps = max(float(np.abs(w).max()) for w in want), max(len(s) for s in sentences) + 2
    bound = 2 * f32_bound(scale, steps, OFFICIAL)  # the kept values are scaled by 1 / (1 - 0.5)
    kept = dropped = 0
    for rep in reps:  # a module in training mode (nn.Module's default, as AllenNLP's): dropout on each output
        rep = rep.detach().numpy()
        for b, w in enumerate(want):
            got = rep[b, : len(w)]
            on = got != 0
            assert np.abs(got[on] - 2 * w[on]).max() < bound
            kept, dropped = kept + on.sum(), dropped + (~on).sum()
            assert not rep[b, len(w):].any()
    print(f"\nthree lines, float32: kept values within {bound:.1e} of 2 x the reference mix; "
          f"{dropped / (kept + dropped):.2f} dropped")
    assert 0.35 < dropped / (kept + dropped) < 0.65  # p = 0.5 over 288 values: 5 standard deviations
    elmo.eval()
    again = elmo(batch_to_ids(sentences))["elmo_representations"][0].detach().numpy()
    diff, pad = max_diff(again, want)
    print(f"eval mode, float32: max |diff| {diff:.2e} (derived bound {bound / 2:.2e})")
    assert diff < bound / 2 and pad == 0


def test_each_layer_and_each_mix_equal_the_reference_in_float64(files):
    """scalar_mix_parameters=[-9e10, 1, -9e10] picks one layer (AllenNLP's own example); then the
    trainable mix at its start (1/3 each) and a pinned one (softmax of the parameters, gamma 1)."""
    options_file, weight_file, weights = files
    ref = [reference_with_boundaries(weights, s) for s in SENTENCES]
    per_layer = []
    for k in range(3):
        params = [-9e10] * 3
        params[k] = 1.0
        (rep,), _ = run64(Elmo(options_file, weight_file, 1, dropout=0.0, scalar_mix_parameters=params))
        per_layer.append(max_diff(rep, [r[k] for r in ref]))
    print(f"\nElmo vs the TF reference, float64, per layer (max |diff|, padding): {per_layer}")
    assert all(diff < F64_TOL and pad == 0 for diff, pad in per_layer)
    for params in (None, PINNED):
        reps, mask = run64(Elmo(options_file, weight_file, 2, dropout=0.0, scalar_mix_parameters=params))
        want = [mix(r, params or (0.0, 0.0, 0.0)) for r in ref]
        diffs = [max_diff(rep, want) for rep in reps]
        print(f"mix {params}: {diffs}")
        assert all(diff < F64_TOL and pad == 0 for diff, pad in diffs)
        assert mask.tolist() == [[i < len(s) for i in range(7)] for s in SENTENCES]


def test_keep_sentence_boundaries_keeps_both_markers_and_their_mask(files):
    options_file, weight_file, weights = files
    (rep,), mask = run64(Elmo(options_file, weight_file, 1, dropout=0.0, keep_sentence_boundaries=True))
    assert rep.shape == (3, 9, 12) and mask.shape == (3, 9)
    assert mask.tolist() == [[i < len(s) + 2 for i in range(9)] for s in SENTENCES]
    diff, pad = max_diff(rep, [mix(reference_layers(weights, ["<S>", *s, "</S>"])) for s in SENTENCES])
    assert diff < F64_TOL and pad == 0


def test_do_layer_norm_normalises_each_layer_over_the_batch_as_allennlp(files):
    """AllenNLP's ScalarMix layer norm: per layer, the mean and variance of all unmasked values of
    the batch, `<S>` and `</S>` included (it runs before they are removed)."""
    options_file, weight_file, weights = files
    full = [reference_layers(weights, ["<S>", *s, "</S>"]) for s in SENTENCES]
    values = np.concatenate([f.reshape(3, -1) for f in full], axis=1)  # [L+1, every unmasked value]
    mean, var = values.mean(1), values.var(1)
    want = [mix((f - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-13), PINNED)[1:-1] for f in full]
    (rep,), _ = run64(Elmo(options_file, weight_file, 1, dropout=0.0, do_layer_norm=True,
                           scalar_mix_parameters=PINNED))
    diff, pad = max_diff(rep, want)
    assert diff < F64_TOL and pad == 0


def test_gradients_reach_the_bilm_only_with_requires_grad_and_the_mixes_train_in_both(files):
    options_file, weight_file, _ = files
    ids = batch_to_ids(SENTENCES)
    for requires_grad in (True, False):
        elmo = Elmo(options_file, weight_file, 2, requires_grad=requires_grad, dropout=0.0)
        out = elmo(ids)
        sum(r.sum() for r in out["elmo_representations"]).backward()
        bilm = {n: p for n, p in elmo.named_parameters() if n.startswith("_bilm.")}
        assert len(bilm) == 33  # char CNN, highway, projection, 2 directions x 2 layers x 5 LSTM tensors
        if requires_grad:
            assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in bilm.values())
        else:
            assert all(not p.requires_grad and p.grad is None for p in bilm.values())
        for k in range(2):
            mix_k = getattr(elmo, f"scalar_mix_{k}")
            assert mix_k.weights.grad.abs().sum() > 0 and mix_k.gamma.grad is not None
    pinned = Elmo(options_file, weight_file, 1, dropout=0.0, scalar_mix_parameters=PINNED)
    assert pinned.scalar_mix_0.weights.tolist() == PINNED and float(pinned.scalar_mix_0.gamma) == 1.0
    assert not any(p.requires_grad for p in pinned.parameters())  # nothing to train: AllenNLP's too


def test_batch_to_ids_gives_allennlps_ids():
    """bilm-tf's char ids + 1 (begin-of-word 259, bytes + 1, end-of-word 260, padding 261), 0 for
    positions past a sentence's end; no <S>/</S> added. AllenNLP's ELMoCharacterMapper, by hand."""
    ids = batch_to_ids([["a", "é"], ["<S>"], [], ["x" * 60]])
    assert ids.shape == (4, 2, 50) and ids.dtype == torch.long
    assert ids[0, 0].tolist() == [259, 98, 260] + [261] * 47  # bilm-tf's [258, 97, 259, 260, ...] + 1
    assert ids[0, 1].tolist() == [259, 0xC3 + 1, 0xA9 + 1, 260] + [261] * 46  # UTF-8 bytes
    assert ids[1, 0].tolist() == [259, 257, 260] + [261] * 47  # "<S>" is the begin-of-sentence char
    assert not ids[1, 1].any() and not ids[2].any()  # padding rows are all 0
    assert ids[3, 0].tolist() == [259] + [ord("x") + 1] * 48 + [260]  # cut to 48 bytes
    assert batch_to_ids([]).shape == (0, 0, 50)


def test_a_run_directory_or_an_import_works_in_place_of_the_two_files(files, tiny_bilm, tmp_path):
    options_file, weight_file, _ = files
    import_elmo(options_file, weight_file, tmp_path / "imported")
    for k in range(3):  # one layer at a time, against Embedder.layers on the same run (float64 both)
        params = [-9e10] * 3
        params[k] = 1.0
        (from_import,), _ = run64(Elmo(str(tmp_path / "imported"), None, 1, dropout=0.0, scalar_mix_parameters=params))
        (from_files,), _ = run64(Elmo(options_file, weight_file, 1, dropout=0.0, scalar_mix_parameters=params))
        assert np.abs(from_import - from_files).max() < F64_TOL
        (from_run,), mask = run64(Elmo(tiny_bilm, None, 1, dropout=0.0, scalar_mix_parameters=params),
                                  [["the", "cat", "sees", "a", "dog", "."], ["a", "book"]])
        embedder = Embedder.from_run(tiny_bilm, "cpu")
        embedder.model.double()
        with torch.no_grad():
            layers, want_mask = embedder.layers([["the", "cat", "sees", "a", "dog", "."], ["a", "book"]])
        assert mask.tolist() == want_mask.tolist()
        assert np.abs(from_run - layers[:, k].numpy()).max() < F64_TOL


def test_vocab_to_cache_looks_up_the_same_token_vectors(files):
    """word_inputs index vocab_to_cache (0 = padding); the layers equal the char path's, within
    float32 rounding (the cache's char CNN ran in other batches); an unknown word falls back."""
    options_file, weight_file, weights = files
    vocab = ["@@PADDING@@", *sorted({w for s in SENTENCES for w in s})]
    word_ids = torch.tensor([[vocab.index(w) for w in s] + [0] * (7 - len(s)) for s in SENTENCES])
    elmo = Elmo(options_file, weight_file, 1, dropout=0.0, vocab_to_cache=vocab)
    chars = batch_to_ids(SENTENCES)
    cached = elmo(chars, word_ids)["elmo_representations"][0].detach().numpy()
    plain = elmo(chars)["elmo_representations"][0].detach().numpy()
    want = [mix(reference_with_boundaries(weights, s)) for s in SENTENCES]
    scale = max(float(np.abs(w).max()) for w in want)
    assert np.abs(cached - plain).max() < 2 * f32_bound(scale, 9, OFFICIAL)
    unknown = word_ids.clone()
    unknown[0, 0] = len(vocab)
    assert np.array_equal(elmo(chars, unknown)["elmo_representations"][0].detach().numpy(), plain)


def test_wrong_arguments_are_one_clear_error(files, tmp_path):
    options_file, weight_file, _ = files
    with pytest.raises(ConfigError, match="scalar_mix_parameters has 2 values; this biLM has 3 layers"):
        Elmo(options_file, weight_file, 1, scalar_mix_parameters=[0.0, 1.0])
    with pytest.raises(DataError, match="pass the weights.hdf5 too"):
        Elmo(options_file, None, 1)
    with pytest.raises(DataError, match="local files only"):
        Elmo("https://example.org/options.json", "https://example.org/weights.hdf5", 1)
    gap = batch_to_ids([["a", "b"]])
    gap[0, 0] = 0
    with pytest.raises(DataError, match="before a token"):
        Elmo(options_file, weight_file, 1)(gap)
