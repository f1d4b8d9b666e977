"""load_config: precedence, flavour presets, errors that name their key, save/load round trip."""
import dataclasses

import pytest

from elmo_dist.config import (
    FULL_FILTERS,
    SMALL_FILTERS,
    ModelConfig,
    PretrainConfig,
    arch_diff,
    load,
    save_config,
    valid_keys,
)
from elmo_dist.errors import ConfigError

from conftest import REPO


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(*args):
    with pytest.raises(ConfigError) as err:
        load(PretrainConfig, *args)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- precedence ----------------------------------------------------------------------------------

def test_defaults_without_file_or_overrides():
    cfg = load(PretrainConfig, None)
    assert isinstance(cfg, PretrainConfig)
    assert cfg == PretrainConfig()
    assert cfg.model.flavour == "debug" and cfg.model.lstm_dim == 256 and cfg.model.projection_dim == 64
    assert cfg.data.unroll_steps == 20 and cfg.train.max_steps == 1000 and cfg.optim.lr == 0.2


def test_precedence_defaults_flavour_yaml_overrides(tmp_path):
    path = write(tmp_path, "model:\n  flavour: small\n  projection_dim: 96\ntrain:\n  max_steps: 77\n")
    cfg = load(PretrainConfig, path)
    assert cfg.model.lstm_dim == 1024             # flavour preset beats the default (256)
    assert cfg.model.projection_dim == 96         # YAML beats the preset (128)
    assert cfg.model.n_highway == 1               # preset
    assert cfg.model.char_embed_dim == 16         # default, untouched by preset and file
    assert cfg.train.max_steps == 77
    cfg = load(PretrainConfig, path, ["model.projection_dim=48", "data.batch_size=5"])
    assert cfg.model.projection_dim == 48         # CLI beats YAML
    assert cfg.model.lstm_dim == 1024
    assert cfg.train.max_steps == 77
    assert cfg.data.batch_size == 5


def test_yaml_beats_flavour_for_a_preset_key(tmp_path):
    path = write(tmp_path, "model:\n  flavour: original\n  lstm_dim: 100\n  cell_clip: null\n")
    cfg = load(PretrainConfig, path)
    assert cfg.model.lstm_dim == 100
    assert cfg.model.cell_clip is None
    assert cfg.model.proj_clip == 3.0
    assert cfg.model.projection_dim == 512


def test_override_can_pick_the_flavour(tmp_path):
    path = write(tmp_path, "model:\n  flavour: small\n")
    cfg = load(PretrainConfig, path, ["model.flavour=medium"])
    assert (cfg.model.flavour, cfg.model.lstm_dim, cfg.model.projection_dim) == ("medium", 2048, 256)
    # a later override of the same key wins
    cfg = load(PretrainConfig, path, ["model.lstm_dim=10", "model.lstm_dim=12"])
    assert cfg.model.lstm_dim == 12


def test_override_values_are_typed():
    cfg = load(PretrainConfig, None, ["model.cell_clip=2.5", "data.stateful=false", "optim.lr=0.05",
                             "model.filters=[[1,4],[2,8]]", "train.device=cpu"])
    assert cfg.model.cell_clip == 2.5
    assert cfg.data.stateful is False
    assert cfg.optim.lr == 0.05
    assert cfg.model.filters == [[1, 4], [2, 8]]
    assert cfg.train.device == "cpu"


def test_empty_yaml_is_defaults(tmp_path):
    assert load(PretrainConfig, write(tmp_path, "")) == PretrainConfig()


# -- flavours ------------------------------------------------------------------------------------

def test_debug_flavour_is_tiny():
    m = load(PretrainConfig, None, ["model.flavour=debug"]).model
    assert m.filters == SMALL_FILTERS
    assert sum(n for _, n in m.filters) == 256
    assert (m.n_highway, m.lstm_dim, m.projection_dim) == (0, 256, 64)
    assert m.cell_clip is None and m.proj_clip is None


@pytest.mark.parametrize("flavour, lstm, proj, highway", [
    ("small", 1024, 128, 1), ("medium", 2048, 256, 1), ("original", 4096, 512, 2)])
def test_big_flavours(flavour, lstm, proj, highway):
    m = load(PretrainConfig, None, [f"model.flavour={flavour}"]).model
    assert (m.lstm_dim, m.projection_dim, m.n_highway) == (lstm, proj, highway)
    assert m.filters == [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
    assert m.filters == FULL_FILTERS
    assert sum(n for _, n in m.filters) == 2048
    assert m.n_layers == 2 and m.char_embed_dim == 16 and m.max_chars_per_token == 50
    if flavour == "original":
        assert m.cell_clip == 3.0 and m.proj_clip == 3.0
        assert m.n_negative_samples == 8192
    else:
        assert m.cell_clip is None and m.proj_clip is None
        assert m.n_negative_samples == 1024


def test_preset_filters_are_not_shared_between_configs():
    a = load(PretrainConfig, None, ["model.flavour=small"])
    a.model.filters[0][1] = 999
    b = load(PretrainConfig, None, ["model.flavour=small"])
    assert b.model.filters[0] == [1, 32]
    assert FULL_FILTERS[0] == [1, 32]


def test_unknown_flavour():
    msg = one_line_error(None, ["model.flavour=huge"])
    assert "model.flavour" in msg and "'huge'" in msg
    assert "debug" in msg and "original" in msg


# -- unknown keys --------------------------------------------------------------------------------

def test_unknown_override_key_suggests_the_closest():
    msg = one_line_error(None, ["train.max_step=100"])
    assert "'train.max_step'" in msg
    assert "did you mean 'train.max_steps'?" in msg


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "model:\n  lstm_dmi: 64\n")
    msg = one_line_error(path)
    assert str(path) in msg
    assert "'model.lstm_dmi'" in msg and "did you mean 'model.lstm_dim'?" in msg


def test_unknown_top_level_yaml_key(tmp_path):
    msg = one_line_error(write(tmp_path, "trian:\n  max_steps: 3\n"))
    assert "'trian.max_steps'" in msg and "did you mean 'train.max_steps'?" in msg


def test_misspelt_section_suggests_the_full_valid_key():
    msg = one_line_error(None, ["modle.lstm_dim=5"])
    assert "'modle.lstm_dim'" in msg
    assert "did you mean 'model.lstm_dim'?" in msg


def test_misspelt_section_is_at_least_an_error_naming_it():
    msg = one_line_error(None, ["modle.lstm_dim=5"])
    assert "modle" in msg and "'model" in msg


def test_empty_yaml_section_is_allowed(tmp_path):
    path = write(tmp_path, "model:\n  # lstm_dim: 512\ntrain:\n  max_steps: 5\n")
    cfg = load(PretrainConfig, path)
    assert cfg.train.max_steps == 5 and cfg.model == ModelConfig()


def test_section_with_a_scalar_value_is_not_called_unknown():
    msg = one_line_error(None, ["model=5"])
    assert "'model'" in msg
    assert "unknown" not in msg


def test_far_off_key_lists_the_sections():
    msg = one_line_error(None, ["zzzzzz=1"])
    assert "'zzzzzz'" in msg
    assert "checkpoint, data, dist, logging, model, optim, slurm, train" in msg


def test_override_without_equals():
    msg = one_line_error(None, ["train.max_steps"])
    assert "train.max_steps" in msg and "key=value" in msg


def test_valid_keys_lists_every_leaf():
    keys = valid_keys(PretrainConfig)
    assert "train.max_steps" in keys and "model.lstm_dim" in keys and "data.unroll_steps" in keys
    assert "model" not in keys
    cfg = PretrainConfig()
    n_fields = sum(len(dataclasses.fields(getattr(cfg, f.name))) for f in dataclasses.fields(PretrainConfig))
    assert len(keys) == len(set(keys)) == n_fields


# -- bad values ----------------------------------------------------------------------------------

def test_wrong_type_names_the_key():
    msg = one_line_error(None, ["train.max_steps=abc"])
    assert "'train.max_steps'" in msg and "abc" in msg


def test_wrong_type_in_yaml_names_the_key_and_file(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: lots\n")
    msg = one_line_error(path)
    assert "'data.batch_size'" in msg and str(path) in msg


@pytest.mark.parametrize("override, key", [
    ("data.unroll_steps=0", "data.unroll_steps"),
    ("data.batch_size=-2", "data.batch_size"),
    ("model.lstm_dim=-1", "model.lstm_dim"),
    ("model.projection_dim=0", "model.projection_dim"),
    ("model.n_layers=0", "model.n_layers"),
    ("model.n_highway=-1", "model.n_highway"),
    ("model.cell_clip=-3", "model.cell_clip"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.softmax=hierarchical", "model.softmax"),
    ("model.filters=[[1,0]]", "model.filters"),
    ("train.max_steps=0", "train.max_steps"),
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.implementation=apex", "optim.implementation"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
])
def test_bad_values_name_their_key(override, key):
    msg = one_line_error(None, [override])
    assert f"'{key}'" in msg


def test_missing_and_malformed_files(tmp_path):
    assert "not found" in one_line_error(tmp_path / "missing.yaml")
    assert "not valid YAML" in one_line_error(write(tmp_path, "model: [unclosed\n"))
    assert "expected a mapping" in one_line_error(write(tmp_path, "- a\n- b\n", "list.yaml"))


# -- save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    [],
    ["model.flavour=original", "model.softmax=adaptive", "data.stateful=false", "optim.betas=[0.8,0.9]"],
    ["model.flavour=small", "model.cell_clip=2.0", "model.filters=[[1,8],[3,16]]", "train.run_dir=/tmp/x y"],
])
def test_save_then_load_round_trips(tmp_path, overrides):
    cfg = load(PretrainConfig, None, overrides)
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    again = load(PretrainConfig, path)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    # and saving again gives the same file
    save_config(again, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_saved_config_wins_over_a_changed_preset(tmp_path):
    """A saved config spells every field out, so it reloads to itself even against its flavour."""
    cfg = load(PretrainConfig, None, ["model.flavour=medium", "model.lstm_dim=300"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load(PretrainConfig, tmp_path / "c.yaml").model.lstm_dim == 300


def test_arch_diff():
    a = ModelConfig()
    b = dataclasses.replace(a, lstm_dim=512, dropout=0.5)
    assert arch_diff(a, b) == ["model.lstm_dim: 256 -> 512"]
    assert arch_diff(a, a) == []


def test_a_bare_no_for_mixed_precision_means_no(tmp_path):
    (tmp_path / "c.yaml").write_text("dist:\n  mixed_precision: no\n")
    assert load(PretrainConfig, tmp_path / "c.yaml").dist.mixed_precision == "no"
    assert load(PretrainConfig, None, ["dist.mixed_precision=no"]).dist.mixed_precision == "no"


def test_on_off_yes_no_are_the_words_not_yaml_1_1_booleans(tmp_path):
    """The README's own `train.nonfinite=off` was refused as "got 'False'" before."""
    (tmp_path / "c.yaml").write_text("train:\n  nonfinite: off\n  compile: yes\n  stop_signals: [USR1, TERM]\n")
    cfg = load(PretrainConfig, tmp_path / "c.yaml")
    assert cfg.train.nonfinite == "off" and cfg.train.compile is True
    cfg = load(PretrainConfig, None, ["train.nonfinite=off", "train.compile=on"])
    assert cfg.train.nonfinite == "off" and cfg.train.compile is True
    assert load(PretrainConfig, None, ["train.compile=no"]).train.compile is False
    (tmp_path / "q.yaml").write_text("train:\n  nonfinite: 'OFF'\n")  # quoted: a string anyway, checked as such
    with pytest.raises(ConfigError, match="train.nonfinite"):
        load(PretrainConfig, tmp_path / "q.yaml")


def test_an_empty_override_clears_a_string_key():
    """`data.valid=` (nothing after =) means the empty string, so a file the config names can be cleared
    from the command line; it was null before, refused as "Incompatible value 'None'"."""
    from elmo_dist.config import FinetuneConfig

    cfg = load(FinetuneConfig, REPO / "configs/tagging.yaml", ["data.valid=", "data.test= "])
    assert (cfg.data.valid, cfg.data.test) == ("", "")
    with pytest.raises(ConfigError, match="train.epochs"):
        load(FinetuneConfig, REPO / "configs/tagging.yaml", ["train.epochs="])
