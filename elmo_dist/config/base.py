"""The machinery behind every elmo_dist config: typed dataclasses from YAML plus dotted overrides.

    cfg = load(PretrainConfig, "configs/debug.yaml", ["train.max_steps=100"])
    cfg = load(FinetuneConfig, "configs/finetune.yaml", ["bilm.path=runs/x"])
    cfg = from_tree(PretrainConfig, tree, "submitted config")     # a resolved config, as a job receives it

Precedence: overrides > YAML file > the class's presets (a model flavour) > dataclass defaults.
Allowed words are typed as `Literal[...]` fields, which OmegaConf checks (naming the key and the
allowed values); what types can't say, each class's `validate()` checks. An unknown key anywhere is a
ConfigError naming the full dotted key and the closest valid one; a value of the wrong type names
its key. `elmo_dist.config` (pretraining and fine-tuning) is built on it.

Values are read as YAML 1.2 reads them: only true/false are booleans. YAML 1.1 (PyYAML, and so
OmegaConf) also reads plain on/off/yes/no as booleans, which turned `train.nonfinite=off` into
False and `dist.mixed_precision: no` into False, both then refused as not a valid mode. Those four
words stay the words the user wrote; a boolean key still accepts them (OmegaConf converts them).
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elmo_dist.errors import ConfigError


def _section_type(f: dataclasses.Field):
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def valid_keys(root: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass, e.g. 'train.max_steps'."""
    keys = []
    for f in dataclasses.fields(root):
        section = _section_type(f)
        keys.extend(valid_keys(section, prefix + f.name + ".") if section else [prefix + f.name])
    return keys


def _leaf_keys(tree: dict, source: str, root: type, prefix: str = "") -> list[str]:
    sections = {f.name for f in dataclasses.fields(root) if _section_type(f)} if not prefix else set()
    keys = []
    for key, value in tree.items():
        full = prefix + str(key)
        if full in sections and not isinstance(value, dict):
            if value is not None:  # an empty YAML section (every key commented out) is fine
                raise ConfigError(f"{source}: config section '{full}' must be a mapping of keys, got {value!r}")
        elif isinstance(value, dict):
            keys.extend(_leaf_keys(value, source, root, full + "."))
        else:
            keys.append(full)
    return keys


def check_keys(tree: dict, source: str, root: type) -> None:
    allowed = valid_keys(root)
    for full in _leaf_keys(tree, source, root):
        if full not in allowed:
            close = difflib.get_close_matches(full, allowed, n=1, cutoff=0.5)
            tops = sorted({k.split(".")[0] for k in allowed})
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid sections: {', '.join(tops)}"
            raise ConfigError(f"{source}: unknown config key '{full}'{hint}")


def require(ok: bool, key: str, why: str) -> None:
    """A semantic check on one key: ConfigError naming it when `ok` is false."""
    if not ok:
        raise ConfigError(f"config key '{key}' {why}")


def _drop_empty(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if v is not None}


_YAML11_WORDS = {"on", "off", "yes", "no"}  # compared lowercased


def _keep_word(item: str) -> str:
    """key=off -> key="off": the word, not YAML 1.1's boolean; key= -> key="": an empty string (such as
    `data.valid=`, clearing a file a config names), not null."""
    key, value = item.split("=", 1)
    return f'{key}="{value.strip()}"' if value.strip().lower() in _YAML11_WORDS or not value.strip() else item


def _restore_words(node, tree):
    """Put back the plain on/off/yes/no scalars of a YAML document that were read as booleans;
    `node` is the document's node graph (yaml.compose), `tree` what it was loaded as."""
    if isinstance(node, yaml.MappingNode) and isinstance(tree, dict):
        pairs = [(k.value, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode) and isinstance(tree, list):
        pairs = list(enumerate(node.value))
    else:
        return
    for key, child in pairs:
        if key not in (tree if isinstance(tree, dict) else range(len(tree))):
            continue
        if (isinstance(child, yaml.ScalarNode) and child.style is None and isinstance(tree[key], bool)
                and child.value.lower() in _YAML11_WORDS):
            tree[key] = child.value
        else:
            _restore_words(child, tree[key])


def parse_overrides(overrides: list[str], root: type) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.max_steps=100)")
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist([_keep_word(item) for item in overrides]))
    except OmegaConfBaseException as e:
        raise ConfigError(f"overrides: {str(e).splitlines()[0]}") from None
    check_keys(tree, "overrides", root)
    return _drop_empty(tree)


def read_yaml(path: str | Path, root: type, text: str | None = None) -> dict:
    """The config tree of the YAML file at `path`, keys checked; `text`, if given, is the file's
    content already read (a checkpoint's config, read while the checkpoint was pinned) and `path`
    only names it in errors."""
    path = Path(path)
    if text is None:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        text = path.read_text(encoding="utf-8")
    try:
        tree = OmegaConf.to_container(OmegaConf.create(text))
        _restore_words(yaml.compose(text, Loader=yaml.SafeLoader), tree)
    except Exception as e:  # yaml.YAMLError and OmegaConf errors alike
        detail = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
        raise ConfigError(f"{path}: not valid YAML: {detail}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(tree).__name__}")
    check_keys(tree, str(path), root)
    return _drop_empty(tree)


def build(root: type, layers: list[dict], source: str):
    """Merge dict layers (lowest precedence first) over the defaults into a typed instance."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(root), *layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {str(e).splitlines()[0]}") from None


def merge_trees(*trees: dict) -> dict:
    return OmegaConf.to_container(OmegaConf.merge(*trees)) if trees else {}


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_container(cfg) -> dict:
    """A config instance as plain nested dicts and lists (picklable, YAML-able)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def save_config(cfg, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_yaml(cfg))


def from_tree(cls: type, tree: dict, source: str = "config"):
    """A validated `cls` from a nested dict: keys checked, the class's preset layers (its optional
    `layers(tree, source)`) under the tree, then `validate()`."""
    check_keys(tree, source, cls)
    layers = cls.layers(tree, source) if hasattr(cls, "layers") else [tree]
    cfg = build(cls, layers, source)
    cfg.validate()
    return cfg


def load(cls: type, path: str | Path | None = None, overrides: list[str] = (), text: str | None = None):
    """Every config's loader: defaults <- presets <- the YAML file at `path` <- dotted `overrides`,
    validated. `text`: the file's content, already read (see read_yaml)."""
    tree = read_yaml(path, cls, text) if path else {}
    over = parse_overrides(list(overrides), cls)
    return from_tree(cls, merge_trees(tree, over), str(path) if path else "overrides")
