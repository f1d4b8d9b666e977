"""The one-way order of layers (docs/architecture.md), checked on the source itself.

Every `import` in elmo_dist is read with `ast`, those inside functions included: a lazy import
still makes one part depend on another. A part may import its own modules and parts of lower
layers, never a part of its own or a higher layer.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "elmo_dist"

# lowest first; parts on one line may not import each other
LAYERS = [
    ["errors"],
    ["files"],
    ["configlib"],
    ["config"],
    ["data"],
    ["model"],
    ["runs"],
    ["runtime"],
    ["embedder", "train", "interop"],
    ["elmo"],
    ["classify"],
    ["commands"],
    ["launch"],
    ["cli_prepare"],
    ["cli"],
    ["__main__"],
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
DISTRIBUTED = ("torch.distributed", "accelerate", "deepspeed", "submitit")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """'elmo_dist.train.trainer' -> 'train'; the package root itself -> ''."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module `path` imports, anywhere in the file, with its line; `from X import y` counts
    `X.y` when that is a module of ours (so `from elmo_dist import runs` is the runs part)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (REPO / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (REPO / Path(*sub.split("."))).is_dir()
                found.append((sub if is_module else node.module, node.lineno))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(module_name(p)) for p in sources()} - {""}
    assert parts <= set(RANK), f"parts without a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_no_import_goes_against_the_order_of_layers():
    wrong = []
    for path in sources():
        mine = part_of(module_name(path))
        if mine == "":  # the package root re-exports from above every layer, lazily (the test below)
            continue
        for target, line in imports(path):
            if not target.startswith("elmo_dist"):
                continue
            theirs = part_of(target)
            if theirs in ("", mine):
                continue
            if RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the order of layers:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {module_name(p): {t for t, _ in imports(p) if t.startswith("elmo_dist.")} for p in sources()}
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of meaning; leave those edges out
    graph = {m: {t for t in ts if not (t.startswith(m + ".") and (PACKAGE.parent / Path(*m.split("."))).is_dir())}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_model_is_plain_pytorch_and_only_launch_knows_slurm():
    for path in sources():
        part = part_of(module_name(path))
        for target, line in imports(path):
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if part == "model":
                assert not target.startswith(DISTRIBUTED), where
            if part not in ("launch", "cli"):
                assert not target.startswith("submitit") and "slurm_env" not in target, where


def test_the_embedding_api_does_not_import_the_training_stack():
    code = ("import sys, elmo_dist.embedder, elmo_dist.runs\n"
            "from elmo_dist import Elmo, batch_to_ids\n"
            "print(','.join(m for m in ('accelerate', 'deepspeed', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"importing elmo_dist.embedder or Elmo pulled in {out.stdout.strip()}"


def test_the_package_root_exports_lazily():
    """`from elmo_dist import Elmo, batch_to_ids` works, but the root imports its parts only inside a
    function (its module `__getattr__`): `import elmo_dist`, which every part and the CLI's first
    instant go through, loads neither torch nor any part."""
    root = PACKAGE / "__init__.py"
    top = [node.lineno for node in ast.parse(root.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert top == [], f"elmo_dist/__init__.py imports at module level, lines {top}"
    code = ("import sys, elmo_dist\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('elmo_dist.')))\n"
            "from elmo_dist import Elmo, batch_to_ids\n"
            "import elmo_dist.elmo\n"
            "print(Elmo is elmo_dist.elmo.Elmo and batch_to_ids is elmo_dist.elmo.batch_to_ids)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["[]", "True"], out.stdout


def test_the_layer_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a model module that imports the trainer is reported, naming both files."""
    fake = tmp_path / "elmo_dist"
    (fake / "model").mkdir(parents=True)
    (fake / "train").mkdir()
    (fake / "train" / "trainer.py").write_text("")
    (fake / "model" / "bad.py").write_text("def f():\n    from elmo_dist.train.trainer import Trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    try:
        test_no_import_goes_against_the_order_of_layers()
    except AssertionError as e:
        assert "elmo_dist/model/bad.py:2 (model) imports elmo_dist.train.trainer (train)" in str(e)
    else:
        raise AssertionError("an upward import went unnoticed")


# -- one owner for each shared concern (docs/architecture.md) -------------------------------------
def calls(path: Path) -> list[tuple[str, int]]:
    """Every call in `path` as the dotted name it is made through ('signal.signal', 'Accelerator',
    'path.write_text'), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            found.append((".".join(reversed(parts)), node.lineno))
    return found


def places(predicate) -> set[str]:
    """The modules (paths relative to the package) with a call for which `predicate(name)` holds."""
    return {str(p.relative_to(PACKAGE)) for p in sources() for name, _ in calls(p) if predicate(name)}


def test_fine_tuning_and_launching_import_nothing_from_pretraining():
    wrong = [f"{p.relative_to(REPO)}:{line} imports {t}" for p in sources()
             if part_of(module_name(p)) in ("classify", "launch")
             for t, line in imports(p) if part_of(t) == "train"]
    assert not wrong, "\n".join(wrong)


def test_runs_reads_saved_runs_and_writes_nothing():
    writes = ("write_text", "write_bytes", "save_file", "save", "mkdir", "unlink", "rename", "replace", "rmtree",
              "copyfile", "touch", "dump")
    wrong = [f"runs.py:{line} calls {name}" for name, line in calls(PACKAGE / "runs.py")
             if name.split(".")[-1] in writes]
    opens = [line for name, line in calls(PACKAGE / "runs.py") if name == "open"]
    source = (PACKAGE / "runs.py").read_text().splitlines()
    wrong += [f"runs.py:{line} opens a file to write" for line in opens
              if any(mode in source[line - 1] for mode in ('"w', '"a', "'w", "'a"))]
    assert not wrong, "\n".join(wrong)


def test_one_accelerator_builder_one_checkpointer_one_signal_owner():
    assert places(lambda n: n.split(".")[-1] == "Accelerator") == {"runtime/accel.py"}
    # checkpoints and weights are written by the checkpointer alone (exports included)
    assert places(lambda n: n in ("save_file", "torch.save")) == {"runtime/checkpoint.py"}
    # signal handlers are installed in one place, the StopRequest every command builds once
    assert places(lambda n: n == "signal.signal") == {"runtime/stop.py"}
    assert places(lambda n: n.split(".")[-1] == "StopRequest") == {"runtime/stop.py"}


def test_one_requeue_path_and_one_rendezvous_formula():
    """The sbatch scripts are thin wrappers: no requeue, no rendezvous address or port of their own."""
    scripts = {p.name: p.read_text() for p in (REPO / "slurm").glob("*.sh")}
    for name, text in scripts.items():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "scontrol" not in code and "MASTER_ADDR" not in code and "MASTER_PORT" not in code, name
    requeues = {str(p.relative_to(PACKAGE)) for p in sources() if '"requeue"' in p.read_text()}
    assert requeues == {"launch/requeue.py"}
    rendezvous = {str(p.relative_to(PACKAGE)) for p in sources() if 'environ["MASTER_ADDR"] =' in p.read_text()}
    assert rendezvous == {"launch/slurm_env.py"}
