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

from elmo_dist.config import ModelConfig
from elmo_dist.data.char_ids import token_char_ids
from elmo_dist.embedder import Embedder

from conftest import EPS32, REPO, TINY_OVERRIDES, f32_bound, ppl_rtol, run_cli

pytestmark = pytest.mark.slow(seconds=60)  # its serial seconds: conftest starts the slowest first

FILTERS = [[1, 4], [2, 4], [3, 8]]
CHAR_DIM, HIGHWAY, CELLS, PROJ, LAYERS, CLIP = 4, 1, 12, 6, 2, 3.0
SENTENCES = [["the", "cat", "sat", "on", "the", "mat", "."], ["Über", "naïve", "résumé", "!"], ["x"]]

OFFICIAL = ModelConfig(char_embed_dim=CHAR_DIM, filters=FILTERS, n_highway=HIGHWAY, lstm_dim=CELLS,
                       projection_dim=PROJ, n_layers=LAYERS)  # the sizes f32_bound counts roundings over

# The math (import == the TF-convention formula) is checked in float64: unit roundoff 1.1e-16 x values
# <= ~35 x ~500 roundings along the deepest path (f32_bound's count: the char CNN, then 2 layers x 9
# steps of 24-term sums) is ~2e-12; 1e-10 leaves 50x for the clipped recurrence's error growth, while
# storing one weight in float32 instead (2^-24 relative) already moves the LSTM layers by ~1e-8.
F64_TOL = 1e-10


def layers64(run, sentences, **kw) -> list[np.ndarray]:
    """Per sentence [L+1, n, D] with the model in float64 (`Embedder.layers` keeps the model's dtype;
    `embed_sentences` returns float32)."""
    elmo = Embedder.from_run(run, "cpu", **kw)
    elmo.model.double()
    with torch.no_grad():
        layers, _ = elmo.layers(sentences)
    assert layers.dtype == torch.float64
    return [layers[b, :, : len(s)].numpy() for b, s in enumerate(sentences)]


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
            # on a 2^-10 grid: import's forget bias +1 (and export's -1) is exact in float32, so the
            # float64 comparisons below see the math and no rounding of the stored bias
            w[f"{p}/B"] = np.round(rng.normal(size=4 * CELLS) * 1024) / 1024
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
    want = [reference_with_boundaries(weights, s) for s in SENTENCES]
    got = layers64(d / "imported", SENTENCES)
    per_layer = np.max([np.abs(g - w).max(axis=(1, 2)) for g, w in zip(got, want)], axis=0)
    print(f"\nimport vs TF reference (<S>/</S> convention), float64: max |diff| per layer = {per_layer}")
    assert per_layer.max() < F64_TOL  # the top LSTM layer included
    assert max(float(np.abs(g).max()) for g in got) > CLIP  # values the clips actually shaped
    # what users get (float32) is the same within float32's rounding: not bf16 or fp16 somewhere
    scale, steps = max(float(np.abs(w).max()) for w in want), max(len(s) for s in SENTENCES) + 2
    got32 = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    assert got32[0].dtype == np.float32
    diff32 = max(float(np.abs(g - w).max()) for g, w in zip(got32, want))
    print(f"float32: max |diff| = {diff32:.2e}, bound {f32_bound(scale, steps, OFFICIAL):.2e}")
    assert diff32 < f32_bound(scale, steps, OFFICIAL)


def test_the_raw_switch_feeds_bare_tokens_and_differs_from_the_convention(official, tmp_path):
    d, weights = official
    raw = layers64(d / "imported", SENTENCES, sentence_boundaries=False)
    assert max(float(np.abs(g - reference_layers(weights, s)).max()) for g, s in zip(raw, SENTENCES)) < F64_TOL
    marked = layers64(d / "imported", SENTENCES)
    np.testing.assert_allclose(raw[0][0], marked[0][0], rtol=0, atol=F64_TOL)  # the token layer has no context
    assert np.abs(raw[0][-1] - marked[0][-1]).max() > 0.1  # the LSTM layers do
    (tmp_path / "s.txt").write_text("the cat sat on the mat .\n")
    scale = max(float(np.abs(marked[0]).max()), float(np.abs(raw[0]).max()))
    bound = f32_bound(scale, len(SENTENCES[0]) + 2, OFFICIAL)
    for flag, want in (([], marked[0]), (["--no-sentence-boundaries"], raw[0])):
        run_cli("embed", str(d / "imported"), str(tmp_path / "s.txt"), str(tmp_path / "e.h5"), "--device", "cpu",
                *flag)
        with h5py.File(tmp_path / "e.h5") as f:  # float32, against float64: within float32's rounding
            np.testing.assert_allclose(f["0"][...], want, rtol=0, atol=bound)


def test_export_then_import_round_trips_exactly(official, tmp_path):
    d, _ = official
    run_cli("export-elmo", str(d / "imported"), str(tmp_path / "exported"))
    lstm = json.loads((tmp_path / "exported" / "options.json").read_text())["lstm"]
    assert lstm["cell_clip"] == 3 and lstm["proj_clip"] == 3 and lstm["use_skip_connections"] is True
    with h5py.File(tmp_path / "exported" / "weights.hdf5") as a, h5py.File(d / "weights.hdf5") as b:
        names = []
        a.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(names) == sorted(n for n in weights_names(b))
        # exact: transposes and gate reorders, and a forget bias +1 then -1 that is exact on B's grid
        assert all(np.array_equal(a[n][...], b[n][...]) for n in names)
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
    run_elmo, back_elmo = Embedder.from_run(tiny_bilm, "cpu"), Embedder.from_run(tmp_path / "back", "cpu")
    # the weights come back bit for bit, but for TF's one LSTM bias: PyTorch's two are summed, the forget
    # bias's 1 taken off and put back, each a float32 rounding: within 3 u (|b_ih + b_hh| + 1)
    before, after = run_elmo.model.state_dict(), back_elmo.model.state_dict()  # the softmax included
    assert before.keys() == after.keys()
    for name, w in before.items():
        if name.endswith(("bias_ih_l0", "bias_hh_l0")):
            continue
        assert torch.equal(after[name], w), name
    for name in (n for n in before if n.endswith("bias_ih_l0")):
        s = before[name] + before[name.replace("_ih_", "_hh_")]
        got = after[name] + after[name.replace("_ih_", "_hh_")]
        assert ((got - s).abs() <= 1.5 * EPS32 * (s.abs() + 1)).all(), name
    words = ["the", "cat", "sees", "the", "fish", "."]
    a, b = run_elmo.embed_sentences([words])[0], back_elmo.embed_sentences([words])[0]
    # the same kernels on both sides: they differ only by those re-rounded biases, a few roundings more
    # per gate and step (extra_terms), so within float32's rounding of the layers
    m = run_elmo.cfg.model
    bound = f32_bound(float(np.abs(a).max()), len(words) + 2, m, extra_terms=3 * m.n_layers * (len(words) + 2))
    print(f"\nrun -> export-elmo -> import-elmo: max |diff| = {float(np.abs(a - b).max()):.2e} (bound {bound:.1e})")
    assert np.abs(a - b).max() < bound
    ppl_a = run_cli("evaluate", str(tiny_bilm), "data.max_eval_tokens=2000", "--out", str(tmp_path / "ea")).stdout
    # the import carries no data settings: evaluate it with the run's (window length and lanes shape the figure)
    ppl_b = run_cli("evaluate", str(tmp_path / "back"), f"data.dir={grammar_corpus}", "data.max_eval_tokens=2000",
                    "data.unroll_steps=10", "data.eval_batch_size=32",
                    "train.device=cpu", "--out", str(tmp_path / "eb")).stdout
    mean = [json.loads((tmp_path / e / "summary.json").read_text())["val_ppl"] for e in ("ea", "eb")]
    # the same kernels and windows (10 steps, 32 lanes) but those re-rounded biases: within float32's rounding
    bound = ppl_rtol(mean[0], m, unroll=10, lanes=32, vocab_size=len(run_elmo.vocab))
    assert abs(mean[0] - mean[1]) / mean[0] < bound, (ppl_a, ppl_b, bound)


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
    # started from it, then trained: 2 Adagrad steps at lr 0.001 with the initial accumulator 1 move a
    # weight by lr |g| / sqrt(1 + g^2) < lr each
    assert torch.allclose(before, after, rtol=0, atol=2 * 0.001) and not torch.equal(before, after)


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
