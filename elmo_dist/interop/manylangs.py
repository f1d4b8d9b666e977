"""ELMoForManyLangs models (HIT-SCIR's ELMo for many languages) as elmo-dist imports.

    elmo-dist import-elmo zh.model models/zh

Their model directory holds `config.json` (the training command's options: its `config_path` names
the architecture file, looked for where it points, then by its name beside config.json; a
config.json with the architecture's `token_embedder` and `encoder` in it is read as it is), the
dictionaries `char.dic` and `word.dic` (lines `entry<TAB>id`; a line that is only an id stands for
U+3000, as their reader has it), and two PyTorch state dicts, `token_embedder.pkl` and
`encoder.pkl`, read with `torch.load(weights_only=True)`: tensors only, never code.

The conversion, theirs -> ours (from their source, elmoformanylangs/):
- chars: their ids index a dictionary over Unicode characters; it is written as `chars.json`,
  specials first (elmo_dist.data.char_dict), and the char table's rows move with it. Their batcher
  puts the id that char.dic lists as `<eow>` before a word and the one listed as `<bow>` after it
  (`create_one_batch`, in training and at inference alike): each row goes to the role it played;
- words: their word embedding comes first in [word; char CNN] before the projection; its rows take
  vocab.txt's order: `<S>`, `</S>`, `<UNK>` get the rows of `<bos>`, `<eos>`, `<oov>`, then their
  words follow in id order (`<pad>`'s row, which only padding positions read, is dropped);
- highway: their gate multiplies the input, `g * x + (1 - g) * relu(A x)`, ours the transform, so
  our carry is their gate negated (sigmoid(-z) = 1 - sigmoid(z)); A is the first half of their
  [2F, F] matrix;
- LSTM: AllenNLP's LstmCellWithProjection, gates i, f, g, o as in PyTorch, one bias (on the state
  side), no forget-bias offset, the memory clipped before the output and the projection after (a
  clip of 0 is none), skip connections around every layer after the first.
The import has no softmax (their released models have no classifier.pkl, and one is not read).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from elmo_dist.config import ModelConfig, PretrainConfig
from elmo_dist.data.char_dict import SPECIALS as CHAR_SPECIALS
from elmo_dist.data.char_dict import CharDictionary
from elmo_dist.data.vocab import SPECIALS, Vocabulary
from elmo_dist.errors import DataError, OutputError
from elmo_dist.files import refuse_overwrite, same_file, writable_dir
from elmo_dist.model import build_bilm
from elmo_dist.runs import EXPORT_FILES, load_tensors
from elmo_dist.runtime.checkpoint import write_export

FILES = ("config.json", "char.dic", "word.dic", "token_embedder.pkl", "encoder.pkl")
# what their batcher puts at each of our special char rows (their <eow> leads a word, see above)
CHAR_ROLES = ("<bos>", "<eos>", "<eow>", "<bow>", "<oov>", "<pad>")
WORD_SPECIALS = ("<bos>", "<eos>", "<oov>", "<pad>")  # the first three become <S>, </S>, <UNK>


def _json(path: Path) -> dict:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(tree, dict):
        raise DataError(f"{path}: a JSON {type(tree).__name__}, not an object")
    return tree


def architecture(model_dir: Path) -> tuple[dict, Path]:
    """The architecture tree (token_embedder, encoder) and the file it came from."""
    path = model_dir / "config.json"
    options = _json(path)
    if "token_embedder" in options and "encoder" in options:
        return options, path
    if "config_path" not in options:
        raise DataError(f"{path}: has neither 'config_path' (the training options' pointer to the architecture "
                        "file) nor the architecture's 'token_embedder' and 'encoder'")
    named = Path(str(options["config_path"]))
    for candidate in (model_dir / named, model_dir / named.name):  # an absolute path stays itself
        if candidate.is_file():
            return _json(candidate), candidate
    raise DataError(f"{path}: config_path '{named}' is not in {model_dir}; copy that file there (ELMoForManyLangs "
                    f"ships its architecture files as elmoformanylangs/configs/{named.name})")


def _get(tree: dict, key: str, source: Path):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"{source}: missing key '{key}'")
        node = node[part]
    return node


def _number(tree: dict, key: str, source: Path, low: int, whole: bool = True):
    v = _get(tree, key, source)
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not number or v < low or (whole and v != int(v)):
        raise DataError(f"{source}: '{key}' is {v!r}; expected {'an integer' if whole else 'a number'} >= {low}")
    return int(v) if whole else float(v)


def model_config(arch: dict, source: Path) -> ModelConfig:
    """Our ModelConfig (but the char table's size) from their architecture; what we can't honour
    is an error naming the key."""
    for key, want in (("token_embedder.name", "cnn"), ("encoder.name", "elmo")):
        got = _get(arch, key, source)
        if str(got).lower() != want:  # their code lowercases both
            raise DataError(f"{source}: '{key}' is {got!r}; only '{want}' (what the released models use) is "
                            "supported")
    activation = _get(arch, "token_embedder.activation", source)
    if activation != "relu":
        raise DataError(f"{source}: 'token_embedder.activation' is {activation!r}; only 'relu' is supported")
    if _number(arch, "token_embedder.char_dim", source, 0) == 0:
        raise DataError(f"{source}: 'token_embedder.char_dim' is 0: a model without the char CNN is not supported")
    filters = _get(arch, "token_embedder.filters", source)
    if not isinstance(filters, list) or not filters or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, int) and x > 0 for x in f) for f in filters):
        raise DataError(f"{source}: 'token_embedder.filters' is {filters!r}; expected [width, count] pairs")
    # their cells clip only when the value is truthy: 0 and null are "no clip"
    clips = [None if _get(arch, f"encoder.{k}", source) is None else _number(arch, f"encoder.{k}", source, 0, False)
             for k in ("cell_clip", "proj_clip")]
    te = {k: _number(arch, f"token_embedder.{k}", source, low)
          for k, low in (("char_dim", 1), ("n_highway", 0), ("max_characters_per_token", 3), ("word_dim", 0))}
    enc = {k: _number(arch, f"encoder.{k}", source, 1) for k in ("dim", "projection_dim", "n_layers")}
    return ModelConfig(flavour="original", encoder="char_cnn", char_embed_dim=te["char_dim"],
                       filters=[list(f) for f in filters], n_highway=te["n_highway"],
                       max_chars_per_token=te["max_characters_per_token"], char_cnn_word_dim=te["word_dim"],
                       lstm_dim=enc["dim"], projection_dim=enc["projection_dim"], n_layers=enc["n_layers"],
                       cell_clip=clips[0] or None, proj_clip=clips[1] or None, residual=True)


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²", which isdigit() takes and int() refuses


def read_dictionary(path: Path) -> dict[str, int]:
    """entry -> id of a char.dic or word.dic, read as their reader does (each line stripped, then
    `entry<TAB>id`; a lone id is U+3000's); ids must be 0..n-1, each entry and id once."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e})") from None
    lines = text.split("\n")
    entries: dict[str, int] = {}
    where: dict[str, int] = {}
    by_id: dict[int, int] = {}
    for n, line in enumerate(lines[:-1] if lines[-1] == "" else lines, 1):
        fields = line.strip().split("\t")
        if len(fields) == 1 and _is_id(fields[0]):
            fields.insert(0, "\u3000")  # a whitespace entry that the strip took away
        if len(fields) != 2 or not _is_id(fields[1]):
            raise DataError(f"{path}:{n}: expected 'entry<TAB>id', got {line!r}")
        entry, i = fields[0], int(fields[1])
        if entry in entries:
            raise DataError(f"{path}:{n}: {entry!r} is listed twice (first on line {where[entry]})")
        if i in by_id:
            raise DataError(f"{path}:{n}: id {i} is used twice (first on line {by_id[i]})")
        entries[entry], where[entry], by_id[i] = i, n, n
    for entry, i in entries.items():
        if i >= len(entries):
            raise DataError(f"{path}:{where[entry]}: id {i} is past the end: {len(entries)} entries take ids "
                            f"0..{len(entries) - 1}")
    return entries


def _needs(entries: dict[str, int], names: tuple, path: Path) -> None:
    missing = [name for name in names if name not in entries]
    if missing:
        raise DataError(f"{path}: has no {', '.join(missing)} entry; ELMoForManyLangs writes {', '.join(names)}")


def char_rows(entries: dict[str, int], path: Path) -> tuple[CharDictionary, list[int]]:
    """Our char dictionary, and for each of its ids the row of their table it takes."""
    _needs(entries, CHAR_ROLES, path)
    chars = sorted((i, c) for c, i in entries.items() if c not in CHAR_SPECIALS)
    for i, c in chars:
        if len(c) != 1:
            raise DataError(f"{path}: entry {c!r} (id {i}) is neither one character nor one of "
                            f"{', '.join(CHAR_SPECIALS)}")
    return CharDictionary([c for _, c in chars]), [entries[r] for r in CHAR_ROLES] + [i for i, _ in chars]


def _holdable(word: str) -> bool:
    """Whether vocab.txt can hold `word` as its own entry (elmo_dist.data.vocab reads it back)."""
    return word not in SPECIALS and not any(c.isspace() or c in "\ufeff\x00" for c in word)


def word_rows(entries: dict[str, int], path: Path) -> tuple[Vocabulary, list[int], int]:
    """Our vocabulary, for each of its ids the row of their table it takes, and how many of their
    words it cannot hold (tokenized text never has them: whitespace, U+FEFF, NUL, or spelled <S>,
    </S>, <UNK>); those read <UNK>'s row instead."""
    _needs(entries, WORD_SPECIALS, path)
    words = sorted((i, w) for w, i in entries.items() if w not in WORD_SPECIALS)
    kept = [(i, w) for i, w in words if _holdable(w)]
    rows = [entries[w] for w in WORD_SPECIALS[:3]] + [i for i, _ in kept]
    return Vocabulary(list(SPECIALS) + [w for _, w in kept]), rows, len(words) - len(kept)


def expected_shapes(m: ModelConfig, n_chars: int, n_words: int) -> tuple[dict, dict]:
    """Their state dicts' keys and shapes for `m`: (token_embedder.pkl's, encoder.pkl's)."""
    n_f, dim, cells = sum(n for _, n in m.filters), m.projection_dim, m.lstm_dim
    te = {"char_emb_layer.embedding.weight": (n_chars, m.char_embed_dim)}
    if m.char_cnn_word_dim:
        te["word_emb_layer.embedding.weight"] = (n_words, m.char_cnn_word_dim)
    for i, (width, n) in enumerate(m.filters):
        te[f"convolutions.{i}.weight"], te[f"convolutions.{i}.bias"] = (n, m.char_embed_dim, width), (n,)
    for k in range(m.n_highway):
        te[f"highways._layers.{k}.weight"], te[f"highways._layers.{k}.bias"] = (2 * n_f, n_f), (2 * n_f,)
    te["projection.weight"], te["projection.bias"] = (dim, m.char_cnn_word_dim + n_f), (dim,)
    enc = {}
    for d in ("forward", "backward"):
        for layer in range(m.n_layers):
            p = f"{d}_layer_{layer}"
            enc.update({f"{p}.input_linearity.weight": (4 * cells, dim),
                        f"{p}.state_linearity.weight": (4 * cells, dim), f"{p}.state_linearity.bias": (4 * cells,),
                        f"{p}.state_projection.weight": (dim, cells)})
    return te, enc


def read_state_dict(path: Path, shapes: dict, arch_source: Path) -> dict[str, torch.Tensor]:
    """A .pkl state dict, checked key by key against `shapes`; float32."""
    sd = load_tensors(path)
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise DataError(f"{path}: holds a {type(sd).__name__} that is not a state dict of tensors")
    for key, shape in shapes.items():
        if key not in sd:
            raise DataError(f"{path}: '{key}' is missing ({arch_source.name} implies shape {shape})")
        if tuple(sd[key].shape) != shape or not sd[key].is_floating_point():
            raise DataError(f"{path}: '{key}' is {sd[key].dtype} of shape {tuple(sd[key].shape)}; "
                            f"{arch_source.name} and the dictionaries imply floats of shape {shape}")
    extra = [k for k in sd if k not in shapes]
    if extra:
        raise DataError(f"{path}: unexpected '{extra[0]}'{f' and {len(extra) - 1} more' if len(extra) > 1 else ''} "
                        f"({arch_source.name} has no place for it)")
    return {k: v.float() for k, v in sd.items()}


def convert(m: ModelConfig, te: dict, enc: dict, char_perm: list[int], word_perm: list[int]) -> dict:
    """Our state dict (all but the softmax) from theirs; see the module docstring."""
    n_f = sum(n for _, n in m.filters)
    sd = {"token_encoder.char_embed.weight": te["char_emb_layer.embedding.weight"][char_perm]}
    if m.char_cnn_word_dim:
        sd["token_encoder.word_embed.weight"] = te["word_emb_layer.embedding.weight"][word_perm]
    for i in range(len(m.filters)):  # Conv1d's [out, in, width] on both sides
        for part in ("weight", "bias"):
            sd[f"token_encoder.convs.{i}.{part}"] = te[f"convolutions.{i}.{part}"]
    for k in range(m.n_highway):
        w, b = te[f"highways._layers.{k}.weight"], te[f"highways._layers.{k}.bias"]
        sd[f"token_encoder.highway.transform.{k}.weight"], sd[f"token_encoder.highway.transform.{k}.bias"] = \
            w[:n_f], b[:n_f]
        sd[f"token_encoder.highway.carry.{k}.weight"], sd[f"token_encoder.highway.carry.{k}.bias"] = \
            -w[n_f:], -b[n_f:]
    sd["token_encoder.proj.weight"], sd["token_encoder.proj.bias"] = te["projection.weight"], te["projection.bias"]
    for d in ("forward", "backward"):
        for layer in range(m.n_layers):
            p, q = f"{d}_layer_{layer}", f"{d}_lstm.layers.{layer}.lstm"
            sd[f"{q}.weight_ih_l0"] = enc[f"{p}.input_linearity.weight"]
            sd[f"{q}.weight_hh_l0"] = enc[f"{p}.state_linearity.weight"]
            sd[f"{q}.bias_ih_l0"] = enc[f"{p}.state_linearity.bias"]
            sd[f"{q}.bias_hh_l0"] = torch.zeros_like(enc[f"{p}.state_linearity.bias"])
            sd[f"{q}.weight_hr_l0"] = enc[f"{p}.state_projection.weight"]
    return {k: v.contiguous() for k, v in sd.items()}


def _need(model_dir: Path, name: str) -> None:
    if not (model_dir / name).is_file():
        raise DataError(f"{model_dir / name}: missing; an ELMoForManyLangs model directory holds {', '.join(FILES)}")


def read_manylangs(model_dir: str | Path) -> tuple[ModelConfig, dict, Vocabulary, CharDictionary, int]:
    """(ModelConfig, our state dict without the softmax, vocabulary, char dictionary, how many of
    their words the vocabulary cannot hold) of an ELMoForManyLangs model directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: not a directory; with two paths, import-elmo takes an ELMoForManyLangs "
                        "model directory and OUT (official weights: options.json weights.hdf5 OUT)")
    _need(model_dir, "config.json")
    arch, arch_source = architecture(model_dir)
    m = model_config(arch, arch_source)
    for name in FILES[1:]:
        if name != "word.dic" or m.char_cnn_word_dim:  # as their reader: no word embedding, no word.dic
            _need(model_dir, name)
    chars, char_perm = char_rows(read_dictionary(model_dir / "char.dic"), model_dir / "char.dic")
    vocab, word_perm, dropped, n_words = Vocabulary(list(SPECIALS)), [], 0, 0
    if m.char_cnn_word_dim:
        words = read_dictionary(model_dir / "word.dic")
        vocab, word_perm, dropped = word_rows(words, model_dir / "word.dic")
        n_words = len(words)
    te_shapes, enc_shapes = expected_shapes(m, len(char_perm), n_words)
    te = read_state_dict(model_dir / "token_embedder.pkl", te_shapes, arch_source)
    enc = read_state_dict(model_dir / "encoder.pkl", enc_shapes, arch_source)
    m = replace(m, char_vocab_size=len(chars))
    return m, convert(m, te, enc, char_perm, word_perm), vocab, chars, dropped


def import_manylangs(model_dir: str | Path, out: str | Path) -> dict:
    """Write the import of an ELMoForManyLangs model directory to `out` (the export layout plus
    chars.json); everything is read and checked before `out` is created."""
    model_dir, out = Path(model_dir), Path(out)
    if same_file(out, model_dir):
        raise OutputError(f"{out}: is the model directory itself; choose another output directory")
    refuse_overwrite([out / name for name in EXPORT_FILES], [model_dir / name for name in FILES], "import-elmo")
    m, sd, vocab, chars, dropped = read_manylangs(model_dir)
    model = build_bilm(m, len(vocab))
    sd["softmax.weight"] = torch.zeros_like(model.softmax.weight)  # none in the format: train one (init_from)
    sd["softmax.bias"] = torch.zeros_like(model.softmax.bias)
    model.load_state_dict(sd)
    cfg = PretrainConfig(model=m)
    cfg.validate()
    writable_dir(out, "OUT_DIR")
    meta = {"source": str(model_dir), "step": 0, "format": "elmoformanylangs", "softmax": False}
    write_export(out, model.state_dict(), cfg, meta, vocab=vocab, chars=chars)
    warnings = [f"{model_dir / 'word.dic'}: {dropped:,} words that vocab.txt cannot hold (whitespace, U+FEFF or "
                "NUL inside, or spelled <S>, </S>, <UNK>) read as <UNK>; tokenized text never has them"] if dropped \
        else []
    return {"out": str(out), "vocab": len(vocab), "chars": len(chars), "softmax": False, "warnings": warnings,
            "parameters": sum(v.numel() for k, v in sd.items() if not k.startswith("softmax"))}
