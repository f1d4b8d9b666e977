"""The field docstrings are the one source of config documentation; configs/reference/ is generated from them."""
import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from elmo_dist.config import FinetuneConfig, PretrainConfig, load, reference
from elmo_dist.config import base as config_base

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_REF = "configs/reference/pretrain.yaml"
FINETUNE_REF = "configs/reference/finetune.yaml"
ROOTS = {PRETRAIN_REF: PretrainConfig, FINETUNE_REF: FinetuneConfig}

# keys an example config may leave out (its defaults apply): only the slurm section of finetune.yaml,
# which keeps just the keys a fine-tuning job changes
MAY_BE_ABSENT = {
    "configs/debug.yaml": set(),
    "configs/finetune.yaml": {k for k in config_base.valid_keys(FinetuneConfig) if k.startswith("slurm.")},
}
EXAMPLE_ROOTS = {"configs/debug.yaml": PretrainConfig, "configs/finetune.yaml": FinetuneConfig}


def documented_keys(path: Path) -> dict[str, str]:
    """{dotted key: the '#' comment block right above it} of a reference file, parsed independently of the
    generator: a block is the run of comment lines at the key's indentation with no blank line in between."""
    out, sections, comments = {}, [], []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = (len(line) - len(line.lstrip())) // 2
        if not stripped:
            comments = []
        elif stripped.startswith("#"):
            comments.append((indent, stripped[1:].removeprefix(" ")))
        else:
            key = stripped.split(":", 1)[0]
            sections = sections[:indent] + [key]
            out[".".join(sections)] = "\n".join(text for i, text in comments if i == indent)
            comments = []
    return out


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return keys


@pytest.mark.parametrize("rel", [PRETRAIN_REF, FINETUNE_REF])
def test_committed_reference_is_what_the_docstrings_give(rel):
    path = REPO / rel
    assert path.is_file(), f"{rel} is missing; run {reference.WRITE_COMMAND}"
    assert path.read_text() == reference.render(ROOTS[rel]), (
        f"{rel} is stale: a config field docstring or default changed; run {reference.WRITE_COMMAND}")


@pytest.mark.parametrize("rel", [PRETRAIN_REF, FINETUNE_REF])
def test_every_key_has_a_docstring_shown_above_it(rel):
    root = ROOTS[rel]
    docs = reference.key_docs(root)
    shown = documented_keys(REPO / rel)
    for key in config_base.valid_keys(root):
        assert docs.get(key, "").strip(), f"{key} has no docstring; add one under its field"
        assert key in shown, f"{key} is not in {rel}"
        assert shown[key] == docs[key], f"{rel}: the comment above {key} is not its docstring"
    # every section's field carries a docstring too, and nothing in the file is not a key
    assert all(docs[k].strip() for k in docs), [k for k in docs if not docs[k].strip()]
    assert set(shown) == set(docs)


def test_docstrings_sit_on_their_own_fields():
    docs = reference.key_docs(PretrainConfig)
    assert docs["train.deadline_margin_s"].startswith("When the job's end time is known")
    assert docs["train.init_from"].startswith("Start a fresh run from these weights")
    assert "deadline" not in docs["train.init_from"].lower()
    assert docs["slurm.partition"] and reference.key_docs(FinetuneConfig)["slurm.partition"] == docs["slurm.partition"]


def test_field_docs_read_multiline_docstrings_dedented():
    @dataclasses.dataclass
    class Tiny:
        a: int = 1
        """First line,
        second line."""
        b: str = "x"

    assert reference.field_docs(Tiny) == {"a": "First line,\nsecond line."}


@pytest.mark.parametrize("rel", ["configs/debug.yaml", "configs/finetune.yaml"])
def test_example_configs_list_every_key(rel):
    present = leaf_keys(OmegaConf.to_container(OmegaConf.load(REPO / rel)))
    missing = set(config_base.valid_keys(EXAMPLE_ROOTS[rel])) - present - MAY_BE_ABSENT[rel]
    assert not missing, f"{rel} lacks {sorted(missing)}"


def test_reference_files_load_to_the_defaults():
    assert load(PretrainConfig, REPO / PRETRAIN_REF) == PretrainConfig()
    examples = reference.REQUIRED_EXAMPLES[FinetuneConfig]
    expected = config_base.build(FinetuneConfig, [OmegaConf.to_container(OmegaConf.from_dotlist(
        [f"{k}={v}" for k, v in examples.items()]))], "expected")
    assert load(FinetuneConfig, REPO / FINETUNE_REF) == expected
    assert dataclasses.replace(expected, data=FinetuneConfig().data) == FinetuneConfig()


@pytest.mark.parametrize("value", ["no", "yes", "", "null", "1e-8", "12", "nan", None, 1e-8, 0.0001, True,
                                   [[1, 2]], ["a b", "x"]])
def test_yaml_values_read_back_unchanged(value):
    assert OmegaConf.to_container(OmegaConf.create(f"k: {reference.yaml_value(value)}"))["k"] == value


def test_check_names_the_stale_file(tmp_path, monkeypatch, capsys):
    for rel, root in ROOTS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(reference.render(root))
    (tmp_path / FINETUNE_REF).write_text("# edited by hand\n")
    monkeypatch.setattr(reference, "REPO", tmp_path)
    assert reference.main(["--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and FINETUNE_REF in err and PRETRAIN_REF not in err and reference.WRITE_COMMAND in err
    assert reference.main(["--write"]) == 0
    assert reference.main(["--check"]) == 0
