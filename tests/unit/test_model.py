"""The biLM: output shapes, losses, gradient flow, the ELMo layers and no distributed imports."""
import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import elmo_dist.model
from elmo_dist.config import ModelConfig
from elmo_dist.data.batching import IGNORE
from elmo_dist.data.char_ids import char_id_table
from elmo_dist.model import BiLM, build_bilm
from elmo_dist.model.bilm import reverse_padded

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

V = 40
B, T = 3, 6
# float64 checks: values <= ~10 through ~300 roundings of 1.1e-16 (char CNN, 2 layers x 6 steps of
# 64-term sums) are within ~1e-12 of each other; 1e-10 still fails on a float32 rounding (~1e-7)
F64 = dict(rtol=0, atol=1e-10)
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: twice float32's unit roundoff
WORDS = ["<S>", "</S>", "<UNK>"] + [f"w{i}" for i in range(V - 3)] + ["oovword", "café"]


def tiny_cfg(**kw):
    base = dict(lstm_dim=32, projection_dim=16, filters=[[1, 4], [2, 4], [3, 8]], char_embed_dim=8,
                n_highway=1, n_layers=2, dropout=0.0, softmax="full", n_negative_samples=16,
                adaptive_cutoffs=[10, 25], max_chars_per_token=50)
    base.update(kw)
    return ModelConfig(**base)


def fake_batch(seed=0, stateful=True):
    """A batch like WindowBatcher's: distinct tokens' chars and ids, per-position indices, targets."""
    g = np.random.default_rng(seed)
    uniq = np.arange(len(WORDS))  # every entry, the two last ones OOV (<UNK> as softmax id)
    chars = char_id_table(WORDS, 50)
    token_ids = np.where(uniq < V, uniq, 2)
    fwd_index = g.integers(0, len(WORDS), size=(B, T))
    bwd_index = g.integers(0, len(WORDS), size=(B, T)) if stateful else fwd_index
    fwd_t = g.integers(0, V, size=(B, T))
    bwd_t = g.integers(0, V, size=(B, T))
    fwd_t[0, 2] = IGNORE
    bwd_t[1, 0] = IGNORE
    bwd_t[2, 5] = IGNORE
    to = torch.from_numpy
    return {"chars": to(chars), "token_ids": to(token_ids), "fwd_index": to(fwd_index), "bwd_index": to(bwd_index),
            "fwd_targets": to(fwd_t), "bwd_targets": to(bwd_t), "reset": True}


def all_targets_batch():
    """Targets covering every vocabulary id, so every cluster of an adaptive softmax is used."""
    batch = fake_batch(1)
    ids = torch.arange(B * T) * 2 % V
    batch["fwd_targets"] = ids.view(B, T)
    batch["bwd_targets"] = (ids + 1).view(B, T) % V
    return batch


@pytest.mark.parametrize("softmax", ["full", "sampled", "adaptive"])
@pytest.mark.parametrize("encoder", ["char_cnn", "word"])
def test_forward_scalar_losses_and_every_gradient(softmax, encoder):
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(softmax=softmax, encoder=encoder, word_embed_dim=12), V)
    assert isinstance(model, BiLM)
    batch = all_targets_batch() if softmax == "adaptive" else fake_batch()
    out = model(batch)
    for d in ("fwd", "bwd"):
        assert out[f"nll_{d}"].shape == ()
        assert torch.isfinite(out[f"nll_{d}"])
        assert out[f"nll_{d}"].item() > 0
    assert out["count_fwd"].item() == (batch["fwd_targets"] != IGNORE).sum().item()
    assert out["count_bwd"].item() == (batch["bwd_targets"] != IGNORE).sum().item()
    # the mean NLL of an untrained model is near log V
    mean = (out["nll_fwd"] / out["count_fwd"]).item()
    if softmax != "sampled":
        assert 0.5 * math.log(V) < mean < 2 * math.log(V)
    (out["nll_fwd"] + out["nll_bwd"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    # every tensor really receives signal (the targets cover every adaptive cluster)
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("forward_lstm.layers.1.") for n in names)
    assert any(n.startswith("backward_lstm.layers.1.") for n in names)
    assert any(n.startswith("softmax.adaptive.tail.1") for n in names) == (softmax == "adaptive")


def test_each_direction_trains_only_its_own_lstm():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(), V)
    model(fake_batch())["nll_fwd"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith("backward_lstm"))
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("forward_lstm"))
    assert grads["token_encoder.proj.weight"].abs().sum() > 0


def test_full_softmax_nll_is_mean_cross_entropy_by_hand():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(softmax="sampled"), V).eval()
    batch = fake_batch()
    out = model(batch, full_softmax=True)
    _, fwd, bwd, _ = model.encode(batch["chars"], batch["token_ids"], batch["fwd_index"], batch["bwd_index"])
    logits = fwd[-1] @ model.softmax.weight.t() + model.softmax.bias
    t = batch["fwd_targets"]
    keep = t != IGNORE
    want = torch.nn.functional.cross_entropy(logits[keep], t[keep], reduction="sum")
    # the same LSTM outputs; the softmax rounds differently on each side (float32, no float64 path), each
    # rounding by at most u = EPS32 / 2 relative: per token the 16-term logit (16 u max|logit|) and the
    # log-sum-exp's sum of V exponentials <= 1 (V u relative, which the log makes absolute), then the
    # sum over the n tokens (n u |want|); the two sides differ by at most twice that
    n = int(keep.sum())
    per_token = 16 * float(logits.detach().abs().max()) + V
    torch.testing.assert_close(out["nll_fwd"], want, rtol=0, atol=EPS32 * n * (per_token + float(want.detach())))


def test_ignored_targets_do_not_count():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(), V).eval()
    batch = fake_batch()
    base = model(batch)["nll_fwd"]
    other = dict(batch)
    t = batch["fwd_targets"].clone()
    t[0, 2] = 5  # was IGNORE
    other["fwd_targets"] = t
    assert model(other)["nll_fwd"] > base
    out = model(other)
    assert out["count_fwd"].item() == B * T


def test_state_is_returned_and_changes_the_output():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(), V).eval()
    batch = fake_batch()
    out = model(batch)
    sf, sb = out["state"]
    assert len(sf) == len(sb) == 2
    for h, c in sf + sb:
        assert h.shape == (1, B, 16)
        assert c.shape == (1, B, 32)
    again = model(batch, out["state"])
    assert not torch.allclose(again["nll_fwd"], out["nll_fwd"])
    assert torch.allclose(model(batch)["nll_fwd"], out["nll_fwd"])  # deterministic in eval mode


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_layers_shapes_and_token_layer(n_layers):
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(n_layers=n_layers), V).eval()
    batch = fake_batch()
    layers = model.layers(batch["chars"], batch["token_ids"], batch["fwd_index"])
    assert len(layers) == n_layers + 1
    for x in layers:
        assert x.shape == (B, T, 32)
    emb = model.token_encoder(batch["chars"], batch["token_ids"])[batch["fwd_index"]]
    assert torch.equal(layers[0], torch.cat([emb, emb], dim=-1))
    # layer 1 = forward LSTM on the sentence || backward LSTM on the reversed sentence, re-reversed:
    # the same ops on the same inputs as inside layers(), so bit for bit
    f, _ = model.forward_lstm(emb)
    b, _ = model.backward_lstm(emb.flip(1))
    assert torch.equal(layers[1], torch.cat([f[0], b[0].flip(1)], dim=-1))
    assert torch.equal(layers[-1], torch.cat([f[-1], b[-1].flip(1)], dim=-1))


def test_layers_with_lengths_ignore_padding():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(), V).eval().double()  # other batch shapes round differently: float64
    batch = fake_batch()
    index = batch["fwd_index"].clone()
    lengths = torch.tensor([6, 4, 2])
    full = model.layers(batch["chars"], batch["token_ids"], index, lengths)
    padded = index.clone()
    padded[1, 4:] = 7
    padded[2, 2:] = 9
    other = model.layers(batch["chars"], batch["token_ids"], padded, lengths)
    for a, b in zip(full, other):
        torch.testing.assert_close(a[1, :4], b[1, :4], **F64)
        torch.testing.assert_close(a[2, :2], b[2, :2], **F64)
    # a row's prefix gives the same representations as that sentence alone
    alone = model.layers(batch["chars"], batch["token_ids"], index[1:2, :4])
    for a, b in zip(full, alone):
        torch.testing.assert_close(a[1, :4], b[0], **F64)


def test_reverse_padded():
    x = torch.arange(12).view(2, 6)
    assert reverse_padded(x, None).tolist() == [[5, 4, 3, 2, 1, 0], [11, 10, 9, 8, 7, 6]]
    assert reverse_padded(x, torch.tensor([6, 3])).tolist() == [[5, 4, 3, 2, 1, 0], [8, 7, 6, 9, 10, 11]]
    y = torch.arange(24).view(2, 6, 2)
    assert reverse_padded(y, torch.tensor([2, 6]))[0].tolist() == [[2, 3], [0, 1], [4, 5], [6, 7], [8, 9], [10, 11]]


def test_word_encoder_uses_token_ids_not_chars():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(encoder="word", word_embed_dim=12), V).eval()
    batch = fake_batch()
    enc = model.token_encoder
    assert enc.embed.weight.shape == (V, 12)
    vec = enc(None, batch["token_ids"])
    assert vec.shape == (len(WORDS), 16)
    # the two OOV words share <UNK>'s vector
    assert torch.equal(vec[-1], vec[2]) and torch.equal(vec[-2], vec[2])
    out = model(batch)
    scrambled = dict(batch, chars=torch.zeros_like(batch["chars"]))
    assert torch.equal(model(scrambled)["nll_fwd"], out["nll_fwd"])


def test_char_encoder_distinguishes_oov_words():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(), V).eval()
    batch = fake_batch()
    vec = model.token_encoder(batch["chars"], batch["token_ids"])
    assert vec.shape == (len(WORDS), 16)
    assert not torch.allclose(vec[-1], vec[2])
    assert not torch.allclose(vec[-1], vec[-2])


@pytest.mark.parametrize("filters", [[[1, 4], [2, 4], [3, 8]], [[1, 4], [7, 6]], [[5, 3]]])
def test_char_cnn_on_trimmed_chars_equals_full_width(filters):
    """The batcher trims all-padding char columns; the char CNN must give exactly the same vectors."""
    from elmo_dist.data.batching import trim_chars
    torch.manual_seed(0)
    enc = build_bilm(tiny_cfg(filters=filters, n_highway=1), V).token_encoder.eval().double()  # see F64
    for words in (WORDS, ["<S>", "</S>"], ["a", "bb", "ccc"], ["x" * 46, "y"], ["z" * 60, "<S>"], ["日本語" * 5, "é"]):
        full = torch.from_numpy(char_id_table(words, 50))
        trimmed = torch.from_numpy(trim_chars(char_id_table(words, 50)))
        assert trimmed.shape[1] <= 50
        torch.testing.assert_close(enc(trimmed), enc(full), **F64, msg=str(words))


def test_char_cnn_parameter_shapes():
    model = build_bilm(tiny_cfg(n_highway=2), V)
    enc = model.token_encoder
    assert enc.char_embed.weight.shape == (261, 8)
    assert [c.kernel_size[0] for c in enc.convs] == [1, 2, 3]
    assert [c.out_channels for c in enc.convs] == [4, 4, 8]
    assert len(enc.highway.carry) == 2
    assert enc.proj.weight.shape == (16, 16)
    assert (enc.highway.carry[0].bias == -2).all()
    assert model.softmax.weight.shape == (V, 16)


def test_sampled_training_loss_differs_from_full_but_eval_is_exact():
    torch.manual_seed(0)
    model = build_bilm(tiny_cfg(softmax="sampled", n_negative_samples=8), V).eval()
    batch = fake_batch()
    torch.manual_seed(1)
    sampled = model(batch)["nll_fwd"]
    exact = model(batch, full_softmax=True)["nll_fwd"]
    full = build_bilm(tiny_cfg(softmax="full"), V).eval()
    full.load_state_dict(model.state_dict())
    assert torch.equal(full(batch)["nll_fwd"], exact)  # the same full_nll on the same weights: bit for bit
    assert not torch.allclose(sampled, exact, atol=1e-3)


MODEL_DIR = Path(elmo_dist.model.__file__).parent
FORBIDDEN = ("torch.distributed", "accelerate", "deepspeed", "submitit")


def _imports(path):
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_model_sources_import_nothing_distributed():
    files = sorted(MODEL_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"bilm.py", "lstm.py", "softmax.py", "token_encoder.py", "__init__.py"}
    for f in files:
        text = f.read_text()
        for bad in FORBIDDEN:
            assert bad not in text, f"{f.name} mentions {bad}"
        for name in _imports(f):
            assert not any(name == b or name.startswith(b + ".") for b in FORBIDDEN), (f.name, name)


def test_importing_the_model_loads_no_launcher_library():
    code = ("import sys, elmo_dist.model; "
            "print(sorted(m for m in ('accelerate', 'deepspeed', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
