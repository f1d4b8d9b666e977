"""ELMoForManyLangs models: a small model written in their layout (config.json pointing at an
architecture file, char.dic and word.dic with shuffled ids, token_embedder.pkl and encoder.pkl in
torch's legacy format, random values, small sizes) is imported through the CLI and embedded through
the CLI and the Embedder, and every layer is checked against an independent float64 computation
written from their published source (elmoformanylangs/): the char ids of `create_one_batch` (whose
first id is the one char.dic lists as <eow>), words cut to max_characters_per_token - 2 characters,
the char CNN, their highway, [word; chars] before the projection, AllenNLP's LstmCellWithProjection
with its clips, the skip connections, <bos>/<eos> added and stripped, and `sents2elmo`'s layers
(output_layer -2; -1 is their mean). Export to our format round-trips; the commands that take byte
char ids refuse the import; a bad or partial directory is one error line and no output directory."""
from __future__ import annotations

import collections
import json

import h5py
import numpy as np
import pytest
import torch

from elmo_dist.cli import main
from elmo_dist.config import ModelConfig
from elmo_dist.embedder import Embedder

from conftest import REPO, f32_bound, one_error_line, run_cli, write_order_task

pytestmark = pytest.mark.slow(seconds=50)

FILTERS = [[1, 4], [2, 4], [3, 8]]
CHAR_DIM, WORD_DIM, HIGHWAY, CELLS, PROJ, LAYERS, MAX_CHARS = 4, 5, 2, 12, 6, 2, 10
CELL_CLIP, PROJ_CLIP = 0.5, 0.4  # small: the random weights drive cells and projections past them
CHARS = sorted(set("thecatonmÜbr!好今天.x"))
WORDS = ["the", "cat", "on", ".", "mat", "Über", "!", "好", "xyzzyqqq"]
# an unknown character (ä, ï), unknown words, a word cut to its first 8 characters ("xyzzyqqq", in
# word.dic), Chinese characters, and a one-word sentence
SENTENCES = [["the", "cat", "sät", "on", "the", "mat", "."], ["Über", "naïve", "xyzzyqqqqqqqqqq", "!"], ["x"],
             ["今天", "好"]]
SIZES = ModelConfig(char_embed_dim=CHAR_DIM, filters=FILTERS, n_highway=HIGHWAY, lstm_dim=CELLS,
                    projection_dim=PROJ, n_layers=LAYERS)  # what f32_bound counts roundings over

# float64 on both sides: unit roundoff 1.1e-16 x values <= ~30 x ~700 roundings along the deepest path
# (f32_bound's count: the char CNN, 2 highway layers, the projection, then 2 layers x 9 steps of
# 24-term sums) is ~2e-12; 1e-10 leaves 50x for the clipped recurrence's error growth, while one weight
# stored in float32 instead (2^-24 relative) already moves the LSTM layers by ~1e-8.
F64_TOL = 1e-10


def write_manylangs(d, rng, words=WORDS, word_dim=WORD_DIM) -> dict:
    """A model directory as their biLM.py writes it; returns the float64 weights and dictionaries."""
    d.mkdir(parents=True, exist_ok=True)
    arch = {"encoder": {"name": "elmo", "projection_dim": PROJ, "cell_clip": CELL_CLIP, "proj_clip": PROJ_CLIP,
                        "dim": CELLS, "n_layers": LAYERS},
            "token_embedder": {"name": "cnn", "activation": "relu", "filters": FILTERS, "n_highway": HIGHWAY,
                               "word_dim": word_dim, "char_dim": CHAR_DIM, "max_characters_per_token": MAX_CHARS},
            "classifier": {"name": "sampled_softmax", "n_samples": 8}, "dropout": 0.1}
    (d / "arch.json").write_text(json.dumps(arch))
    # the training command's options; config_path as absolute as on their training machine
    (d / "config.json").write_text(json.dumps({"seed": 1, "config_path": "/users/elmo/configs/arch.json"}))
    char_list = CHARS + ["<bos>", "<eos>", "<oov>", "<pad>", "<bow>", "<eow>"]
    char2id = dict(zip(char_list, rng.permutation(len(char_list)).tolist()))
    (d / "char.dic").write_text("".join(f"{c}\t{i}\n" for c, i in char2id.items()))
    word2id = dict(zip(["<oov>", "<bos>", "<eos>", "<pad>", *words], rng.permutation(len(words) + 4).tolist()))
    if word_dim:
        (d / "word.dic").write_text("".join(f"{w}\t{i}\n" for w, i in word2id.items()))
    n_f = sum(n for _, n in FILTERS)
    te = collections.OrderedDict([("char_emb_layer.embedding.weight", rng.normal(size=(len(char2id), CHAR_DIM)))])
    if word_dim:
        te["word_emb_layer.embedding.weight"] = rng.normal(size=(len(word2id), word_dim))
    for i, (width, n) in enumerate(FILTERS):
        te[f"convolutions.{i}.weight"], te[f"convolutions.{i}.bias"] = rng.normal(size=(n, CHAR_DIM, width)), \
            rng.normal(size=n)
    for k in range(HIGHWAY):
        te[f"highways._layers.{k}.weight"] = rng.normal(size=(2 * n_f, n_f)) / np.sqrt(n_f)
        te[f"highways._layers.{k}.bias"] = rng.normal(size=2 * n_f)
    te["projection.weight"], te["projection.bias"] = rng.normal(size=(PROJ, word_dim + n_f)), rng.normal(size=PROJ)
    enc = collections.OrderedDict()
    for p in (f"{d_}_layer_{layer}" for d_ in ("forward", "backward") for layer in range(LAYERS)):
        enc[f"{p}.input_linearity.weight"] = rng.normal(size=(4 * CELLS, PROJ))
        enc[f"{p}.state_linearity.weight"] = rng.normal(size=(4 * CELLS, PROJ))
        enc[f"{p}.state_linearity.bias"] = rng.normal(size=4 * CELLS)
        enc[f"{p}.state_projection.weight"] = rng.normal(size=(PROJ, CELLS))
    w = {}
    for name, sd in (("token_embedder.pkl", te), ("encoder.pkl", enc)):
        tensors = collections.OrderedDict((k, torch.tensor(v, dtype=torch.float32)) for k, v in sd.items())
        tensors._metadata = collections.OrderedDict({"": {"version": 1}})  # as module.state_dict() has it
        torch.save(tensors, d / name, _use_new_zipfile_serialization=False)  # PyTorch 0.4's format
        w.update({k: v.double().numpy() for k, v in tensors.items()})
    return {"w": w, "char2id": char2id, "word2id": word2id, "word_dim": word_dim}


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def char_ids(tok, char2id):
    """create_one_batch's row: its bow_id is char2id['<eow>'] and its eow_id char2id['<bow>']."""
    row = [char2id["<pad>"]] * MAX_CHARS
    body = [char2id[tok]] if tok in ("<bos>", "<eos>") else [char2id.get(c, char2id["<oov>"]) for c in tok]
    row[0], row[1:1 + len(body)], row[1 + len(body)] = char2id["<eow>"], body, char2id["<bow>"]
    return row


def token_layer(m, tokens):
    """ConvTokenEmbedder: [word embedding; highway(relu(max-pooled convolutions))] -> projection."""
    w, n_f, xs = m["w"], sum(n for _, n in FILTERS), []
    for tok in tokens:
        emb = w["char_emb_layer.embedding.weight"][char_ids(tok, m["char2id"])]  # [MAX_CHARS, CHAR_DIM]
        pooled = []
        for i, (width, _) in enumerate(FILTERS):
            kern = w[f"convolutions.{i}.weight"]  # [out, in, width]
            conv = np.stack([np.einsum("oct,tc->o", kern, emb[t:t + width]) for t in range(MAX_CHARS - width + 1)])
            pooled.append((conv + w[f"convolutions.{i}.bias"]).max(axis=0))
        x = np.maximum(np.concatenate(pooled), 0)
        for k in range(HIGHWAY):
            z = w[f"highways._layers.{k}.weight"] @ x + w[f"highways._layers.{k}.bias"]
            gate = sigmoid(z[n_f:])
            x = gate * x + (1 - gate) * np.maximum(z[:n_f], 0)  # their gate carries the input
        if m["word_dim"]:
            word = w["word_emb_layer.embedding.weight"][m["word2id"].get(tok, m["word2id"]["<oov>"])]
            x = np.concatenate([word, x])
        xs.append(w["projection.weight"] @ x + w["projection.bias"])
    return np.stack(xs)


def lstm_stack(w, direction, x, hits):
    outs = []
    for layer in range(LAYERS):
        p = f"{direction}_layer_{layer}"
        h, c, hs = np.zeros(PROJ), np.zeros(CELLS), []
        for xt in x:
            gates = w[f"{p}.input_linearity.weight"] @ xt + w[f"{p}.state_linearity.weight"] @ h \
                + w[f"{p}.state_linearity.bias"]
            i, f, g, o = np.split(gates, 4)
            c = sigmoid(i) * np.tanh(g) + sigmoid(f) * c
            hits["cell"] += int((np.abs(c) > CELL_CLIP).sum())
            c = np.clip(c, -CELL_CLIP, CELL_CLIP)
            h = w[f"{p}.state_projection.weight"] @ (sigmoid(o) * np.tanh(c))
            hits["proj"] += int((np.abs(h) > PROJ_CLIP).sum())
            h = np.clip(h, -PROJ_CLIP, PROJ_CLIP)
            hs.append(h)
        hs = np.stack(hs) + (x if layer > 0 else 0)  # skip connections after the first layer
        outs.append(hs)
        x = hs
    return outs


def reference(m, sentence, hits=None) -> np.ndarray:
    """sents2elmo(output_layer=-2) for one sentence on a fresh Embedder: [L+1, n, 2*PROJ]."""
    hits = hits if hits is not None else {"cell": 0, "proj": 0}
    tokens = ["<bos>", *(t[:MAX_CHARS - 2] for t in sentence), "<eos>"]  # read_list cuts long words
    x = token_layer(m, tokens)
    fwd, bwd = lstm_stack(m["w"], "forward", x, hits), lstm_stack(m["w"], "backward", x[::-1], hits)
    layers = [np.concatenate([x, x], -1)] + [np.concatenate([f, b[::-1]], -1) for f, b in zip(fwd, bwd)]
    return np.stack(layers)[:, 1:-1]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("manylangs")
    model = write_manylangs(d / "zh.model", np.random.default_rng(0))
    run_cli("import-elmo", str(d / "zh.model"), str(d / "imported"))
    return d, model


def test_imported_layers_match_their_computation(imported):
    d, model = imported
    hits = {"cell": 0, "proj": 0}
    want = [reference(model, s, hits) for s in SENTENCES]
    assert hits["cell"] > 0 and hits["proj"] > 0  # both clips shaped the values compared
    elmo = Embedder.from_run(d / "imported", "cpu")
    elmo.model.double()
    with torch.no_grad():
        layers, _ = elmo.layers(SENTENCES)
    per_layer = np.max([np.abs(layers[b, :, :len(s)].numpy() - w).max(axis=(1, 2))
                        for b, (s, w) in enumerate(zip(SENTENCES, want))], axis=0)
    print(f"\nimport vs their math, float64: max |diff| per layer = {per_layer}")
    assert per_layer.max() < F64_TOL
    # what users get, float32: within float32's rounding (the projection also sums the word embedding)
    scale, steps = max(float(np.abs(w).max()) for w in want), max(len(s) for s in SENTENCES) + 2
    bound = f32_bound(scale, steps, SIZES, extra_terms=WORD_DIM)
    got32 = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    assert max(float(np.abs(g - w).max()) for g, w in zip(got32, want)) < bound


def test_embed_writes_their_layers_and_their_average(imported, tmp_path):
    d, model = imported
    text = tmp_path / "s.txt"
    text.write_text("".join(" ".join(s) + "\n" for s in SENTENCES))
    want = [reference(model, s) for s in SENTENCES]
    bound = f32_bound(max(float(np.abs(w).max()) for w in want), 9, SIZES, extra_terms=WORD_DIM + LAYERS + 1)
    run_cli("embed", str(d / "imported"), str(text), str(tmp_path / "all.h5"), "--device", "cpu")
    # output_layer=-1 is np.average over the L+1 layers: equal weights, which --weights gives
    run_cli("embed", str(d / "imported"), str(text), str(tmp_path / "avg.h5"), "--device", "cpu",
            "--weights", ",".join([repr(1 / (LAYERS + 1))] * (LAYERS + 1)))
    with h5py.File(tmp_path / "all.h5") as a, h5py.File(tmp_path / "avg.h5") as m:
        for i, w in enumerate(want):
            np.testing.assert_allclose(a[str(i)][...], w, rtol=0, atol=bound)
            np.testing.assert_allclose(m[str(i)][...], w.mean(axis=0), rtol=0, atol=bound)


def test_a_model_without_a_word_embedding_needs_no_word_dic(tmp_path, capsys):
    model = write_manylangs(tmp_path / "m", np.random.default_rng(3), word_dim=0)
    assert not (tmp_path / "m" / "word.dic").exists()
    assert main(["import-elmo", str(tmp_path / "m"), str(tmp_path / "out")]) == 0
    got = Embedder.from_run(tmp_path / "out", "cpu")
    got.model.double()
    with torch.no_grad():
        layers, _ = got.layers(SENTENCES[:2])
    for b, s in enumerate(SENTENCES[:2]):
        np.testing.assert_allclose(layers[b, :, :len(s)].numpy(), reference(model, s), rtol=0, atol=F64_TOL)


def test_words_that_vocab_txt_cannot_hold_are_named_and_read_as_unknown(tmp_path, capsys):
    write_manylangs(tmp_path / "m", np.random.default_rng(4), words=[*WORDS, "<UNK>", "a\u3000b"])
    assert main(["import-elmo", str(tmp_path / "m"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "elmo-dist: warning:" in err and "word.dic: 2 words" in err
    vocab = (tmp_path / "out" / "vocab.txt").read_text().splitlines()
    assert vocab == ["<S>", "</S>", "<UNK>"] + sorted(WORDS, key=vocab.index)  # theirs in id order, once each


def test_export_round_trips_and_the_byte_id_commands_refuse(imported, tmp_path):
    d, _ = imported
    run_cli("export", str(d / "imported"), "--out", str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "chars.json").read_bytes() == (d / "imported" / "chars.json").read_bytes()
    a = Embedder.from_run(d / "imported", "cpu").embed_sentences(SENTENCES)
    b = Embedder.from_run(tmp_path / "exported", "cpu").embed_sentences(SENTENCES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    err = one_error_line(run_cli("export-elmo", str(d / "imported"), str(tmp_path / "elmo"), check=False))
    assert "model.char_vocab_size" in err and "UTF-8 byte ids only" in err and not (tmp_path / "elmo").exists()
    err = one_error_line(run_cli("evaluate", str(d / "imported"), check=False))
    assert "model.char_vocab_size" in err and "evaluate" in err
    from elmo_dist import Elmo
    from elmo_dist.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"char dictionary .*\(use elmo_dist\.embedder\.Embedder\)"):
        Elmo(str(d / "imported"), None, 1)


def test_finetune_takes_the_import(imported, tmp_path):
    from elmo_dist.classify.finetune import finetune
    from elmo_dist.config import FinetuneConfig, load

    d, _ = imported
    data = write_order_task(tmp_path / "task.jsonl", 60, seed=1)
    cfg = load(FinetuneConfig, REPO / "configs/finetune.yaml", [
        f"bilm.path={d / 'imported'}", f"data.train={data}", f"train.run_dir={tmp_path / 'ft'}", "train.epochs=1",
        "train.device=cpu", "variants=[scalar_mix]", "baseline=false", "classifier.token_dim=8",
        "classifier.hidden_dim=8"])
    summary = finetune(cfg)
    assert 0.0 <= summary["variants"]["scalar_mix"]["test"]["accuracy"] <= 1.0


def _edit_json(name, change):
    def edit(d):
        tree = json.loads((d / name).read_text())
        change(tree)
        (d / name).write_text(json.dumps(tree))
    return edit


def _edit_state(name, change):
    def edit(d):
        sd = torch.load(d / name, weights_only=True)
        change(sd)
        torch.save(sd, d / name)
    return edit


class _RunsCode:
    """Pickles as a call of open(): a loader that unpickles objects would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


BAD_DIRECTORIES = {
    "no config.json": (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    "no char.dic": (lambda d: (d / "char.dic").unlink(), "char.dic: missing"),
    "no word.dic": (lambda d: (d / "word.dic").unlink(), "word.dic: missing"),
    "no encoder.pkl": (lambda d: (d / "encoder.pkl").unlink(), "encoder.pkl: missing"),
    "no token_embedder.pkl": (lambda d: (d / "token_embedder.pkl").unlink(), "token_embedder.pkl: missing"),
    "bad JSON": (lambda d: (d / "config.json").write_text("{'seed': 1"), "config.json: not valid JSON"),
    "no architecture file": (lambda d: (d / "arch.json").unlink(), "config_path '/users/elmo/configs/arch.json'"),
    "an LSTM token embedder": (_edit_json("arch.json", lambda t: t["token_embedder"].update(name="lstm")),
                               "arch.json: 'token_embedder.name' is 'lstm'"),
    "tanh": (_edit_json("arch.json", lambda t: t["token_embedder"].update(activation="tanh")),
             "arch.json: 'token_embedder.activation' is 'tanh'"),
    "a missing key": (_edit_json("arch.json", lambda t: t["encoder"].pop("dim")), "missing key 'encoder.dim'"),
    "a line without an id": (lambda d: (d / "char.dic").write_text("a\t0\nb\n"),
                             "char.dic:2: expected 'entry<TAB>id', got 'b'"),
    "no <bow>": (lambda d: (d / "char.dic").write_text((d / "char.dic").read_text().replace("<bow>\t", "<BOW>\t")),
                 "char.dic: has no <bow> entry"),
    "a gap in the ids": (lambda d: (d / "char.dic").write_text("a\t0\nb\t2\n"), "char.dic:2: id 2 is past the end"),
    "a missing weight": (_edit_state("encoder.pkl", lambda sd: sd.pop("backward_layer_1.state_projection.weight")),
                         "encoder.pkl: 'backward_layer_1.state_projection.weight' is missing"),
    "an extra weight": (_edit_state("token_embedder.pkl", lambda sd: sd.update({"extra.weight": torch.zeros(2)})),
                        "token_embedder.pkl: unexpected 'extra.weight'"),
    "a wrong shape": (_edit_state("token_embedder.pkl", lambda sd: sd.update({"projection.bias": torch.zeros(7)})),
                      "token_embedder.pkl: 'projection.bias' is torch.float32 of shape (7,)"),
    "a list": (lambda d: torch.save([torch.zeros(2)], d / "encoder.pkl"), "encoder.pkl: holds a list"),
    "code in a pickle": (lambda d: torch.save({"w": _RunsCode(str(d / "ran"))}, d / "encoder.pkl"),
                         "encoder.pkl: cannot be loaded safely"),
}


@pytest.mark.parametrize("case", BAD_DIRECTORIES)
def test_a_bad_or_partial_directory_is_one_error_line(tmp_path, capsys, case):
    damage, named = BAD_DIRECTORIES[case]
    write_manylangs(tmp_path / "m", np.random.default_rng(1))
    damage(tmp_path / "m")
    assert main(["import-elmo", str(tmp_path / "m"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elmo-dist: error:") and named in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m" / "ran").exists()


def test_the_cli_refusal_has_no_traceback(tmp_path):
    write_manylangs(tmp_path / "m", np.random.default_rng(2))
    (tmp_path / "m" / "encoder.pkl").write_bytes(b"not a pickle")
    err = one_error_line(run_cli("import-elmo", str(tmp_path / "m"), str(tmp_path / "out"), check=False))
    assert "encoder.pkl" in err and not (tmp_path / "out").exists()
    err = one_error_line(run_cli("import-elmo", str(tmp_path / "m" / "config.json"), str(tmp_path / "out"),
                                 check=False))
    assert "not a directory" in err and "options.json weights.hdf5 OUT" in err
