"""The official ELMo format: a synthetic options.json + weights.hdf5 in bilm-tf's layout (random values,
small sizes) is imported, and every layer is checked against an independent NumPy computation of the
TF-convention math (inference char ids +1, gates i, j, f, o, forget bias +1, clipping, skip
connection); export -> import round-trips; embed, evaluate and continued pretraining work on imports."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from elmo_dist.data.char_ids import token_char_ids
from elmo_dist.embedder import Embedder

from conftest import REPO, TINY_OVERRIDES, run_cli

FILTERS = [[1, 4], [2, 4], [3, 8]]
CHAR_DIM, HIGHWAY, CELLS, PROJ, LAYERS, CLIP = 4, 1, 12, 6, 2, 3.0
SENTENCES = [["the", "cat", "sat", "on", "the", "mat", "."], ["Über", "naïve", "résumé", "!"], ["x"]]


def write_official(d, rng, n_characters=262):
    """options.json + weights.hdf5 as bilm-tf's dump_weights writes them (261-row char_embed)."""
    options = {"char_cnn": {"activation": "relu", "embedding": {"dim": CHAR_DIM}, "filters": FILTERS,
                            "max_characters_per_token": 50, "n_characters": n_characters, "n_highway": HIGHWAY},
               "lstm": {"dim": CELLS, "projection_dim": PROJ, "n_layers": LAYERS, "cell_clip": CLIP, "proj_clip": CLIP,
                        "use_skip_connections": True}}
    (d / "options.json").write_text(json.dumps(options))
    n_f = sum(n for _, n in FILTERS)
    w = {"char_embed": rng.normal(size=(261, CHAR_DIM))}
    for i, (width, n) in enumerate(FILTERS):
        w[f"CNN/W_cnn_{i}"] = rng.normal(size=(1, width, CHAR_DIM, n))
        w[f"CNN/b_cnn_{i}"] = rng.normal(size=n)
    for k in range(HIGHWAY):
        for part in ("carry", "transform"):
            w[f"CNN_high_{k}/W_{part}"] = rng.normal(size=(n_f, n_f)) / np.sqrt(n_f)
            w[f"CNN_high_{k}/b_{part}"] = rng.normal(size=n_f)
    w["CNN_proj/W_proj"] = rng.normal(size=(n_f, PROJ))
    w["CNN_proj/b_proj"] = rng.normal(size=PROJ)
    for direction in range(2):
        for layer in range(LAYERS):
            p = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            w[f"{p}/W_0"] = rng.normal(size=(2 * PROJ, 4 * CELLS))  # large: the clips are hit
            w[f"{p}/B"] = rng.normal(size=4 * CELLS)
            w[f"{p}/W_P_0"] = rng.normal(size=(CELLS, PROJ))
    with h5py.File(d / "weights.hdf5", "w") as f:
        for name, arr in w.items():
            f.create_dataset(name, data=arr.astype(np.float32))
    return {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_layers(w, tokens):
    """The TF-convention computation, written out: [L+1, n, 2*PROJ]."""
    table = np.vstack([np.zeros((1, CHAR_DIM)), w["char_embed"]])  # inference ids are shifted by +1
    xs = []
    for tok in tokens:
        emb = table[token_char_ids(tok).astype(np.int64) + 1]  # [50, CHAR_DIM]
        pooled = []
        for i, (width, _) in enumerate(FILTERS):
            kern = w[f"CNN/W_cnn_{i}"][0]  # [width, in, out]
            conv = np.stack([np.einsum("kc,kco->o", emb[t:t + width], kern) for t in range(50 - width + 1)])
            pooled.append((conv + w[f"CNN/b_cnn_{i}"]).max(axis=0))
        x = np.maximum(np.concatenate(pooled), 0)
        for k in range(HIGHWAY):
            carry = sigmoid(x @ w[f"CNN_high_{k}/W_carry"] + w[f"CNN_high_{k}/b_carry"])
            x = (carry * np.maximum(x @ w[f"CNN_high_{k}/W_transform"] + w[f"CNN_high_{k}/b_transform"], 0)
                 + (1 - carry) * x)
        xs.append(x @ w["CNN_proj/W_proj"] + w["CNN_proj/b_proj"])
    x0 = np.stack(xs)
    dirs = [_lstm_stack(w, 0, x0), _lstm_stack(w, 1, x0[::-1])[:, ::-1]]
    lstm_layers = [np.concatenate([dirs[0][k], dirs[1][k]], -1) for k in range(LAYERS)]
    return np.stack([np.concatenate([x0, x0], -1)] + lstm_layers)


def _lstm_stack(w, direction, x):
    outs = []
    for layer in range(LAYERS):
        p = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
        h, c, hs = np.zeros(PROJ), np.zeros(CELLS), []
        for xt in x:
            i, j, f, o = np.split(np.concatenate([xt, h]) @ w[f"{p}/W_0"] + w[f"{p}/B"], 4)
            c = np.clip(sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j), -CLIP, CLIP)
            h = np.clip((sigmoid(o) * np.tanh(c)) @ w[f"{p}/W_P_0"], -CLIP, CLIP)
            hs.append(h)
        hs = np.stack(hs) + (x if layer > 0 else 0)  # the skip connection around every layer after the first
        outs.append(hs)
        x = hs
    return np.stack(outs)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    weights = write_official(d, np.random.default_rng(0))
    run_cli("import-elmo", str(d / "options.json"), str(d / "weights.hdf5"), str(d / "imported"))
    return d, weights


def reference_with_boundaries(w, tokens):
    """bilm-tf's and AllenNLP's convention: run `<S> tokens </S>`, drop the two marker positions."""
    return reference_layers(w, ["<S>", *tokens, "</S>"])[:, 1:-1]


def test_imported_layers_match_the_tf_reference(official):
    d, weights = official
    got = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    diffs = [np.abs(g - reference_with_boundaries(weights, s)).max(axis=(1, 2)) for g, s in zip(got, SENTENCES)]
    per_layer = np.max(diffs, axis=0)
    print(f"\nimport vs TF reference (<S>/</S> convention): max |diff| per layer = {per_layer}")
    assert per_layer.max() < 1e-5  # the top LSTM layer included
    assert max(float(np.abs(g).max()) for g in got) > CLIP  # values the clips actually shaped


def test_the_raw_switch_feeds_bare_tokens_and_differs_from_the_convention(official, tmp_path):
    d, weights = official
    raw = Embedder.from_run(d / "imported", "cpu", sentence_boundaries=False).embed_sentences(SENTENCES)
    assert max(float(np.abs(g - reference_layers(weights, s)).max()) for g, s in zip(raw, SENTENCES)) < 1e-5
    marked = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    np.testing.assert_allclose(raw[0][0], marked[0][0], atol=1e-6)  # the token layer has no context
    assert np.abs(raw[0][-1] - marked[0][-1]).max() > 0.1  # the LSTM layers do
    (tmp_path / "s.txt").write_text("the cat sat on the mat .\n")
    for flag, want in (([], marked[0]), (["--no-sentence-boundaries"], raw[0])):
        run_cli("embed", str(d / "imported"), str(tmp_path / "s.txt"), str(tmp_path / "e.h5"), "--device", "cpu",
                *flag)
        with h5py.File(tmp_path / "e.h5") as f:
            np.testing.assert_allclose(f["0"][...], want, rtol=1e-5, atol=1e-5)


def test_export_then_import_round_trips_exactly(official, tmp_path):
    d, _ = official
    run_cli("export-elmo", str(d / "imported"), str(tmp_path / "exported"))
    lstm = json.loads((tmp_path / "exported" / "options.json").read_text())["lstm"]
    assert lstm["cell_clip"] == 3 and lstm["proj_clip"] == 3 and lstm["use_skip_connections"] is True
    with h5py.File(tmp_path / "exported" / "weights.hdf5") as a, h5py.File(d / "weights.hdf5") as b:
        names = []
        a.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(names) == sorted(n for n in weights_names(b))
        assert max(float(np.abs(a[n][...] - b[n][...]).max()) for n in names) < 1e-6
    run_cli("import-elmo", str(tmp_path / "exported" / "options.json"), str(tmp_path / "exported" / "weights.hdf5"),
            str(tmp_path / "again"))
    first = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    second = Embedder.from_run(tmp_path / "again", "cpu").embed_sentences(SENTENCES)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def weights_names(f):
    names = []
    f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_a_trained_run_round_trips_with_its_softmax(tiny_bilm, grammar_corpus, tmp_path):
    out = tmp_path / "elmo"
    proc = run_cli("export-elmo", str(tiny_bilm), str(out))
    assert {p.name for p in out.iterdir()} >= {"options.json", "weights.hdf5", "softmax.hdf5", "vocab.txt"}
    # unclipped: bilm-tf's TF LSTMCell reads 0 as "clip to [0, 0]"; only a missing key means no clipping
    lstm = json.loads((out / "options.json").read_text())["lstm"]
    assert "cell_clip" not in lstm and "proj_clip" not in lstm and "warning" not in proc.stderr
    run_cli("import-elmo", str(out / "options.json"), str(out / "weights.hdf5"), str(tmp_path / "back"),
            "--vocab", str(out / "vocab.txt"), "--softmax", str(out / "softmax.hdf5"))
    a = Embedder.from_run(tiny_bilm, "cpu").embed_sentences([["the", "cat", "sees", "the", "fish", "."]])[0]
    b = Embedder.from_run(tmp_path / "back", "cpu").embed_sentences([["the", "cat", "sees", "the", "fish", "."]])[0]
    print(f"\nrun -> export-elmo -> import-elmo: max |diff| = {float(np.abs(a - b).max()):.2e}")
    assert np.abs(a - b).max() < 1e-5
    ppl_a = run_cli("evaluate", str(tiny_bilm), "data.max_eval_tokens=2000", "--out", str(tmp_path / "ea")).stdout
    # the import carries no data settings: evaluate it with the run's (window length and lanes shape the figure)
    ppl_b = run_cli("evaluate", str(tmp_path / "back"), f"data.dir={grammar_corpus}", "data.max_eval_tokens=2000",
                    "data.unroll_steps=10", "data.eval_batch_size=32",
                    "train.device=cpu", "--out", str(tmp_path / "eb")).stdout
    mean = [json.loads((tmp_path / e / "summary.json").read_text())["val_ppl"] for e in ("ea", "eb")]
    assert abs(mean[0] - mean[1]) / mean[0] < 1e-4, (ppl_a, ppl_b)


def test_exporting_a_model_without_residual_connections_warns(grammar_corpus, tmp_path):
    run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}",
            f"train.run_dir={tmp_path / 'run'}", *TINY_OVERRIDES, "train.max_steps=2", "train.eval_every=0",
            "model.residual=false")
    proc = run_cli("export-elmo", str(tmp_path / "run"), str(tmp_path / "elmo"))
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("elmo-dist: warning:")]
    assert len(warnings) == 1 and "residual" in warnings[0] and "AllenNLP" in warnings[0]
    assert json.loads((tmp_path / "elmo" / "options.json").read_text())["lstm"]["use_skip_connections"] is False


def test_embed_on_an_import_writes_the_documented_hdf5(official, tmp_path):
    d, _ = official
    (tmp_path / "s.txt").write_text("the cat sat .\n\nÜber alles\n")
    run_cli("embed", str(d / "imported"), str(tmp_path / "s.txt"), str(tmp_path / "e.h5"), "--device", "cpu")
    with h5py.File(tmp_path / "e.h5") as f:
        assert f["0"].shape == (LAYERS + 1, 4, 2 * PROJ) and f["2"].shape == (LAYERS + 1, 2, 2 * PROJ)
        assert "1" not in f and json.loads(f["sentence_to_index"][()]) == {"the cat sat .": "0", "Über alles": "2"}


def test_continued_pretraining_trains_a_new_softmax(official, grammar_corpus, tmp_path):
    d, _ = official
    proc = run_cli("pretrain", str(REPO / "configs/debug.yaml"), f"data.dir={grammar_corpus}",
                   f"train.run_dir={tmp_path / 'run'}", *TINY_OVERRIDES, "train.eval_every=0", "train.max_steps=2",
                   "optim.lr=0.001", f"train.init_from={d / 'imported'}",
                   f"model.char_embed_dim={CHAR_DIM}", f"model.filters={FILTERS}", f"model.n_highway={HIGHWAY}",
                   f"model.lstm_dim={CELLS}", f"model.projection_dim={PROJ}", f"model.cell_clip={CLIP}",
                   f"model.proj_clip={CLIP}")
    assert "encoder and LSTMs; a new softmax over" in proc.stderr
    from safetensors.torch import load_file

    before = load_file(str(d / "imported" / "model.safetensors"))["token_encoder.char_embed.weight"]
    after = load_file(str(tmp_path / "run" / "checkpoints" / "step-2"
                          / "model.safetensors"))["token_encoder.char_embed.weight"]
    assert torch.allclose(before, after, atol=0.05) and not torch.equal(before, after)  # started from it, then trained


def test_evaluate_refuses_an_import_without_a_softmax(official, grammar_corpus):
    d, _ = official
    proc = run_cli("evaluate", str(d / "imported"), f"data.dir={grammar_corpus}", check=False)
    assert proc.returncode == 2 and "without a softmax" in proc.stderr and "train.init_from" in proc.stderr


@pytest.mark.parametrize("damage,named", [
    (lambda f: f.__delitem__("CNN_proj/b_proj"), "dataset 'CNN_proj/b_proj' is missing"),
    (lambda f: (f.__delitem__("CNN/b_cnn_1"), f.create_dataset("CNN/b_cnn_1", data=np.zeros(5, np.float32))),
     "dataset 'CNN/b_cnn_1' has shape (5,)"),
    (lambda f: (f.__delitem__("char_embed"),
                f.create_dataset("char_embed", data=np.zeros((100, CHAR_DIM), np.float32))),
     "dataset 'char_embed' has shape (100, 4)"),
])
def test_a_damaged_weight_file_names_the_dataset(tmp_path, damage, named):
    write_official(tmp_path, np.random.default_rng(1))
    with h5py.File(tmp_path / "weights.hdf5", "a") as f:
        damage(f)
    proc = run_cli("import-elmo", str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5"), str(tmp_path / "o"),
                   check=False)
    assert proc.returncode == 2 and named in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "export.json").exists()


def test_a_file_that_is_not_hdf5_is_an_error(tmp_path):
    write_official(tmp_path, np.random.default_rng(2))
    (tmp_path / "weights.hdf5").write_text("not hdf5")
    proc = run_cli("import-elmo", str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5"), str(tmp_path / "o"),
                   check=False)
    assert proc.returncode == 2 and "weights.hdf5: not an HDF5 file" in proc.stderr
