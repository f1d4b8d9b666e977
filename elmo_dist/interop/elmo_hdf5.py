"""The official ELMo weight format (bilm-tf's `dump_weights`, read by AllenNLP's `Elmo`), both ways.

    elmo-dist import-elmo options.json weights.hdf5 models/elmo-original [--vocab vocab.txt --softmax softmax.hdf5]
    elmo-dist export-elmo runs/small models/small-elmo

An import is an export-style directory (`model.safetensors`, `config.yaml`, `vocab.txt`,
`export.json`) that `embed`, `finetune` and `evaluate` take like a run, and `pretrain` can start from
(`train.init_from`). The conversions, TF convention -> PyTorch:
- char ids: the file's char_embed has 261 rows for the training ids 0..260, which is what we use;
  AllenNLP shifts ids by +1 at inference (n_characters 262, id 0 = no token), so a 262-row table
  loses its first row;
- convolutions `[1, width, in, out]` -> Conv1d `[out, in, width]`; highway and projection matrices
  are transposed (bilm-tf's "carry" gate multiplies the transform, exactly as our Highway does);
- LSTM: `W_0` packs `[input; hidden] x 4 cells` in TF's gate order i, j, f, o; PyTorch wants
  i, f, g(=j), o, separate input and hidden matrices, and TF adds a forget bias of +1 at run time,
  which goes into the f bias here. `W_P_0` is the projection. Clip values come from options.json,
  so a clipped model runs the exact clipped cell.
The softmax is not part of the format: export writes it to `softmax.hdf5` (`softmax/W`, `softmax/b`)
beside `vocab.txt`; import reads it back with --softmax.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from elmo_dist.config import ModelConfig, PretrainConfig
from elmo_dist.data.vocab import SPECIALS, Vocabulary
from elmo_dist.errors import CheckpointError, DataError
from elmo_dist.files import HDF5_BYTES_PER_DATASET, atomic_hdf5, need_space, refuse_overwrite, remove, writable_dir
from elmo_dist.model import build_bilm
from elmo_dist.runs import EXPORT_FILES, open_run
from elmo_dist.runtime.checkpoint import write_export

TF_TO_TORCH = [0, 2, 1, 3]  # gate blocks: TF (i, j, f, o) -> PyTorch (i, f, g, o); its own inverse


def _lstm_path(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def _reorder(t: np.ndarray, cells: int) -> np.ndarray:
    """Permute the 4 gate blocks along axis 0."""
    return np.concatenate([t[i * cells:(i + 1) * cells] for i in TF_TO_TORCH], axis=0)


def model_config(options: dict, source: str) -> ModelConfig:
    """Our ModelConfig from options.json; a key we can't honour is an error naming it."""
    try:
        cnn, lstm = options["char_cnn"], options["lstm"]
        n_chars = cnn.get("n_characters", 261)
        if n_chars not in (261, 262):
            raise DataError(f"{source}: char_cnn.n_characters is {n_chars}; ELMo uses 261 (262 at inference)")
        if cnn.get("activation", "relu") != "relu":
            raise DataError(f"{source}: char_cnn.activation '{cnn['activation']}' is not supported (relu only)")
        cfg = ModelConfig(flavour="original", encoder="char_cnn", char_embed_dim=int(cnn["embedding"]["dim"]),
                            filters=[[int(w), int(n)] for w, n in cnn["filters"]], n_highway=int(cnn["n_highway"]),
                            max_chars_per_token=int(cnn.get("max_characters_per_token", 50)),
                            lstm_dim=int(lstm["dim"]), projection_dim=int(lstm["projection_dim"]),
                            n_layers=int(lstm.get("n_layers", 2)), cell_clip=lstm.get("cell_clip") or None,
                            proj_clip=lstm.get("proj_clip") or None, residual=bool(lstm.get("use_skip_connections")))
    except KeyError as e:
        raise DataError(f"{source}: missing key {e.args[0]!r}") from None
    return cfg


class _Hdf5:
    """Dataset access that names the file and the dataset in every error."""

    def __init__(self, path: Path):
        import h5py

        self.path = path
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path}: not an HDF5 file ({str(e).splitlines()[0]})") from None

    def get(self, name: str, shape: tuple) -> np.ndarray:
        if name not in self.f:
            raise DataError(f"{self.path}: dataset '{name}' is missing")
        arr = np.asarray(self.f[name][...], dtype=np.float32)
        if arr.shape != tuple(shape):
            raise DataError(f"{self.path}: dataset '{name}' has shape {arr.shape}, options.json implies {tuple(shape)}")
        return arr


def read_weights(h: _Hdf5, m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state-dict entries (all but the softmax) from an official weight file."""
    sd, n_filters, dim, cells = {}, sum(n for _, n in m.filters), m.projection_dim, m.lstm_dim
    rows = h.f["char_embed"].shape[0] if "char_embed" in h.f else 261
    table = h.get("char_embed", (rows if rows in (261, 262) else 261, m.char_embed_dim))
    sd["token_encoder.char_embed.weight"] = table[1:] if rows == 262 else table
    for i, (w, n) in enumerate(m.filters):
        sd[f"token_encoder.convs.{i}.weight"] = h.get(f"CNN/W_cnn_{i}",
                                                      (1, w, m.char_embed_dim, n))[0].transpose(2, 1, 0)
        sd[f"token_encoder.convs.{i}.bias"] = h.get(f"CNN/b_cnn_{i}", (n,))
    for k in range(m.n_highway):
        for ours, theirs in (("carry", "carry"), ("transform", "transform")):
            sd[f"token_encoder.highway.{ours}.{k}.weight"] = h.get(f"CNN_high_{k}/W_{theirs}", (n_filters, n_filters)).T
            sd[f"token_encoder.highway.{ours}.{k}.bias"] = h.get(f"CNN_high_{k}/b_{theirs}", (n_filters,))
    sd["token_encoder.proj.weight"] = h.get("CNN_proj/W_proj", (n_filters, dim)).T
    sd["token_encoder.proj.bias"] = h.get("CNN_proj/b_proj", (dim,))
    for d, name in enumerate(("forward_lstm", "backward_lstm")):
        for layer in range(m.n_layers):
            p, q = _lstm_path(d, layer), f"{name}.layers.{layer}.lstm"
            w0 = h.get(f"{p}/W_0", (dim + dim, 4 * cells))
            bias = _reorder(h.get(f"{p}/B", (4 * cells,)), cells)
            bias[cells:2 * cells] += 1.0  # TF's forget_bias, added at run time there
            sd[f"{q}.weight_ih_l0"] = _reorder(w0[:dim].T, cells)
            sd[f"{q}.weight_hh_l0"] = _reorder(w0[dim:].T, cells)
            sd[f"{q}.bias_ih_l0"] = bias
            sd[f"{q}.bias_hh_l0"] = np.zeros_like(bias)
            sd[f"{q}.weight_hr_l0"] = h.get(f"{p}/W_P_0", (cells, dim)).T
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def read_official(options_path: str | Path, weights_path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The ModelConfig and state-dict entries (all but the softmax) of an options.json + weights.hdf5."""
    options_path = Path(options_path)
    try:
        options = json.loads(options_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{options_path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{options_path}: a directory, not an options.json") from None
    except ValueError as e:
        raise DataError(f"{options_path}: not valid JSON ({e})") from None
    m = model_config(options, str(options_path))
    h = _Hdf5(Path(weights_path))
    with h.f:
        return m, read_weights(h, m)


def import_elmo(options_path: str | Path, weights_path: str | Path, out: str | Path,
                vocab_path: str | Path | None = None, softmax_path: str | Path | None = None) -> dict:
    options_path, out = Path(options_path), Path(out)
    refuse_overwrite([out / name for name in EXPORT_FILES], [options_path, weights_path, vocab_path, softmax_path],
                     "import-elmo")
    writable_dir(out, "OUT_DIR")
    if softmax_path and not vocab_path:
        raise DataError("--softmax needs --vocab: the softmax rows are the vocabulary's words")
    vocab = Vocabulary.load(vocab_path) if vocab_path else Vocabulary(list(SPECIALS))
    m, sd = read_official(options_path, weights_path)
    model = build_bilm(m, len(vocab))
    if softmax_path:
        s = _Hdf5(Path(softmax_path))
        with s.f:
            sd["softmax.weight"] = torch.from_numpy(s.get("softmax/W", (len(vocab), m.projection_dim)))
            sd["softmax.bias"] = torch.from_numpy(s.get("softmax/b", (len(vocab),)))
    else:  # no softmax in the format: a zero one, to be trained (train.init_from) or supplied
        sd["softmax.weight"] = torch.zeros_like(model.softmax.weight)
        sd["softmax.bias"] = torch.zeros_like(model.softmax.bias)
    model.load_state_dict(sd)
    cfg = PretrainConfig(model=m)
    cfg.validate()
    meta = {"source": f"{options_path} + {weights_path}", "step": 0, "format": "elmo-hdf5",
            "softmax": bool(softmax_path)}
    write_export(out, model.state_dict(), cfg, meta, vocab=vocab)
    return {"out": str(out), "vocab": len(vocab), "softmax": bool(softmax_path),
            "parameters": sum(v.numel() for k, v in sd.items() if not k.startswith("softmax"))}


def export_elmo(run: str | Path, out: str | Path) -> dict:
    """options.json + weights.hdf5 (+ softmax.hdf5 and vocab.txt) from a run, checkpoint or export;
    options.json is written last, so a directory without it is incomplete."""
    saved = open_run(run)
    m = saved.config.model
    if m.encoder != "char_cnn":
        raise CheckpointError(f"{saved.path}: model.encoder is {m.encoder}; the ELMo format holds char-CNN models only")
    if m.char_vocab_size:
        raise CheckpointError(f"{saved.path}: model.char_vocab_size is {m.char_vocab_size}: the model reads a char "
                              "dictionary, and the ELMo format has UTF-8 byte ids only (`elmo-dist export` keeps it)")
    if m.char_cnn_word_dim:
        raise CheckpointError(f"{saved.path}: model.char_cnn_word_dim is {m.char_cnn_word_dim}: the ELMo format has "
                              "no word embedding beside the char CNN (`elmo-dist export` keeps it)")
    sd = {k: v.float().numpy() for k, v in saved.weights().items()}
    out = Path(out)
    names = ("weights.hdf5", "weights.hdf5.tmp", "options.json", "softmax.hdf5", "softmax.hdf5.tmp", "vocab.txt")
    refuse_overwrite([out / n for n in names], saved.source_files(), "export-elmo")
    writable_dir(out, "OUT_DIR")
    (out / "options.json").unlink(missing_ok=True)  # written last: without it the directory is incomplete
    options = {"char_cnn": {"activation": "relu", "embedding": {"dim": m.char_embed_dim}, "filters": m.filters,
                            "max_characters_per_token": m.max_chars_per_token, "n_characters": 262,
                            "n_highway": m.n_highway},
               "lstm": {"dim": m.lstm_dim, "projection_dim": m.projection_dim, "n_layers": m.n_layers,
                        "use_skip_connections": m.residual}}
    # bilm-tf hands these to TF's LSTMCell, where 0 clips to [0, 0] and only a missing key (None)
    # means "no clipping" (AllenNLP reads 0 as off): an unclipped model omits them
    for key in ("cell_clip", "proj_clip"):
        if getattr(m, key):
            options["lstm"][key] = getattr(m, key)
    warnings = [] if m.residual else [
        f"{saved.path}: model.residual is false; AllenNLP's ELMo loader refuses such a file (\"only support "
        "pretrained biLMs with residual connections\"); bilm-tf reads it"]
    wrote_softmax = "softmax.weight" in sd and saved.has_softmax
    files = {"weights.hdf5": _official_datasets(sd, m)}
    if wrote_softmax:
        files["softmax.hdf5"] = {"softmax/W": sd["softmax.weight"], "softmax/b": sd["softmax.bias"]}
    need_space(out, sum(_hdf5_bytes(d) for d in files.values()), "the ELMo-format files")
    try:
        for name, datasets in files.items():
            _write_hdf5(out / name, datasets, name)
        if wrote_softmax:
            shutil.copyfile(saved.home / "vocab.txt", out / "vocab.txt")
        (out / "options.json").write_text(json.dumps(options, indent=1))
    except BaseException:  # a full disk half-way: none of this export stays
        remove(*(out / name for name in names))
        raise
    return {"out": str(out), "source": str(saved.path), "softmax": wrote_softmax, "warnings": warnings}


def _hdf5_bytes(datasets: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes + HDF5_BYTES_PER_DATASET for a in datasets.values())


def _write_hdf5(path: Path, datasets: dict[str, np.ndarray], what: str) -> None:
    with atomic_hdf5(path, _hdf5_bytes(datasets), what) as h5:
        for name, arr in datasets.items():
            h5.file.create_dataset(name, data=arr)


def _official_datasets(sd: dict, m) -> dict[str, np.ndarray]:
    ds, cells = {"char_embed": sd["token_encoder.char_embed.weight"]}, m.lstm_dim
    for i in range(len(m.filters)):
        ds[f"CNN/W_cnn_{i}"] = sd[f"token_encoder.convs.{i}.weight"].transpose(2, 1, 0)[None]
        ds[f"CNN/b_cnn_{i}"] = sd[f"token_encoder.convs.{i}.bias"]
    for k in range(m.n_highway):
        for part in ("carry", "transform"):
            ds[f"CNN_high_{k}/W_{part}"] = sd[f"token_encoder.highway.{part}.{k}.weight"].T
            ds[f"CNN_high_{k}/b_{part}"] = sd[f"token_encoder.highway.{part}.{k}.bias"]
    ds["CNN_proj/W_proj"] = sd["token_encoder.proj.weight"].T
    ds["CNN_proj/b_proj"] = sd["token_encoder.proj.bias"]
    for d, name in enumerate(("forward_lstm", "backward_lstm")):
        for layer in range(m.n_layers):
            q, p = f"{name}.layers.{layer}.lstm", _lstm_path(d, layer)
            w = np.concatenate([_reorder(sd[f"{q}.weight_ih_l0"], cells), _reorder(sd[f"{q}.weight_hh_l0"], cells)],
                               axis=1)
            bias = _reorder(sd[f"{q}.bias_ih_l0"] + sd[f"{q}.bias_hh_l0"], cells)
            bias[2 * cells:3 * cells] -= 1.0  # TF adds its forget bias back at run time
            ds[f"{p}/W_0"] = w.T
            ds[f"{p}/B"] = bias
            ds[f"{p}/W_P_0"] = sd[f"{q}.weight_hr_l0"].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ds.items()}
