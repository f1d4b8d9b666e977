"""The on-disk layer cache: the same layers as the live biLM, stored ragged, found again for the
same inputs, and rebuilt when anything it depends on changes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from elmo_dist.classify.cache import META, LayerCache, open_or_build, weights_digest
from elmo_dist.embedder import Embedder

from conftest import write_grammar_corpus


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = write_grammar_corpus(tmp_path_factory.mktemp("texts") / "t.txt", 60, seed=3)
    lines = path.read_text().splitlines()
    # documents of very different lengths, one far longer than the rest
    return lines[:20] + [" ".join(lines[20:40])] + lines[40:]


def build(embedder, texts, root, max_tokens=50, logs=None):
    """Each document as one piece of at most `max_tokens` tokens."""
    pieces = lambda i: [embedder.tokenize(texts[i])[:max_tokens]]  # noqa: E731
    return open_or_build(embedder, texts, pieces, {"max_tokens": max_tokens}, root, batch_size=7,
                         weights=weights_digest(embedder.model), acc=one_process(),
                         log=(logs.append if logs is not None else None))


def one_process():
    from elmo_dist.config.finetune import FinetuneDist
    from elmo_dist.runtime.accel import build_accelerator

    return build_accelerator("cpu", FinetuneDist())


def test_the_cache_holds_what_the_live_biLM_gives(tiny_bilm, texts, tmp_path):
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    elmo.model.double()  # the cache's batches differ from this one: in float64 that costs ~1e-15, no more
    cache = build(elmo, texts, tmp_path)
    idx = [20, 3, 0, 40]
    got, mask = cache.batch(idx, "cpu")
    want, want_mask = elmo.layers([elmo.tokenize(texts[i])[:50] for i in idx])
    assert torch.equal(mask, want_mask) and got.shape == want.shape and want.dtype == torch.float64
    # float16 rounding, nothing else: to nearest, within 2^-11 of the value (11 significant bits), or
    # within 2^-25 where it is subnormal (below 2^-14); plus 2^-24 should the conversion pass through
    # float32, and 1e-12 for the float64 batches' own rounding
    torch.testing.assert_close(got.double(), want, rtol=2**-11 + 2**-24, atol=2**-25 + 1e-12)


def test_the_layer_means_are_each_documents_cached_layers_averaged(tiny_bilm, texts, tmp_path):
    """cache.means (what an averaging classifier reads) against float64 means of cache.batch: float32
    sums of n values are within n * 2^-24 of the largest |value| times n, so the mean within
    (n + 1) * 2^-24 * max |value| (the +1 for the division)."""
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    cache = build(elmo, texts, tmp_path, max_tokens=1000)
    idx = [int(np.argmax(cache.lengths)), 3, 0, 40]
    layers, mask = cache.batch(idx, "cpu")
    m = mask[:, None, :, None].double()
    want = (layers.double() * m).sum(2) / m.sum(2)
    got = cache.means(idx, "cpu")
    assert got.shape == (4, elmo.n_layers, elmo.dim) and got.dtype == torch.float32
    bound = (int(cache.lengths.max()) + 1) * 2**-24 * float(layers.abs().max())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=bound)
    assert torch.equal(cache.means(idx[::-1], "cpu"), got.flip(0))  # kept after the first call, in idx order


def test_documents_are_stored_at_their_own_length(tiny_bilm, texts, tmp_path):
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    cache = build(elmo, texts, tmp_path, max_tokens=1000)
    n_tokens = sum(len(elmo.tokenize(t)) for t in texts)
    (layers,) = cache.dir.glob("layers-*.f16")
    assert layers.stat().st_size == n_tokens * elmo.n_layers * elmo.dim * 2  # no padding to the longest
    assert max(cache.lengths) > 10 * min(cache.lengths)


def test_the_same_inputs_find_the_cache_and_a_change_makes_a_new_one(tiny_bilm, texts, tmp_path):
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    logs: list[str] = []
    first = build(elmo, texts, tmp_path, logs=logs)
    stamp = next(first.dir.glob("layers-*")).stat().st_mtime_ns
    again = build(elmo, texts, tmp_path, logs=logs)
    assert again.dir == first.dir and next(again.dir.glob("layers-*")).stat().st_mtime_ns == stamp
    assert any("reusing the layer cache" in line for line in logs)
    changed = [build(elmo, texts[:-1] + [texts[-1] + " again"], tmp_path).dir,
               build(elmo, texts, tmp_path, max_tokens=5).dir,
               build(Embedder.from_run(tiny_bilm, "cpu", sentence_boundaries=False), texts, tmp_path).dir]
    other_weights = Embedder.from_run(tiny_bilm, "cpu")
    with torch.no_grad():
        next(other_weights.model.parameters()).add_(1e-3)
    changed.append(build(other_weights, texts, tmp_path).dir)
    assert len({first.dir, *changed}) == 5


def test_an_incomplete_cache_is_never_read(tiny_bilm, texts, tmp_path):
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    first = build(elmo, texts, tmp_path)
    meta = json.loads((first.dir / META).read_text())
    (first.dir / META).unlink()  # as if the filling process had been killed before the end
    (next(first.dir.glob("layers-*"))).write_bytes(b"")
    rebuilt = build(elmo, texts, tmp_path)
    assert json.loads((rebuilt.dir / META).read_text()) == meta
    assert np.array_equal(LayerCache(rebuilt.dir).lengths, first.lengths)


def test_a_document_of_several_pieces_is_its_pieces_layers_joined(tiny_bilm, texts, tmp_path):
    """A whole document read in windows: position t of its cached layers is token t of the document,
    each window read on its own as `<S> window </S>`."""
    elmo = Embedder.from_run(tiny_bilm, "cpu")
    elmo.model.double()
    words = elmo.tokenize(texts[20])
    windows = [words[:7], words[7:19], words[19:]]
    cache = open_or_build(elmo, [texts[20]], lambda i: windows, {"window_tokens": 12}, tmp_path, batch_size=2,
                          weights=weights_digest(elmo.model), acc=one_process())
    got, mask = cache.batch([0], "cpu")
    assert got.shape[2] == len(words) and bool(mask.all())
    want = torch.cat([elmo.layers([w])[0][0] for w in windows], dim=1)  # [L+1, T, D]
    torch.testing.assert_close(got[0].double(), want, rtol=2**-11 + 2**-24, atol=2**-25 + 1e-12)
    whole = elmo.layers([words])[0][0]  # read as one sentence, the pieces' boundaries would not show
    assert not torch.allclose(got[0, 1:, 7].double(), whole[1:, 7], atol=1e-3)
