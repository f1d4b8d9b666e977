"""`elmo-dist export RUN [--out DIR]`: consolidated fp32 weights (safetensors) plus the config.

    elmo-dist export runs/small --out models/small

Whatever trained the run (one process, DDP, ZeRO 1-3), and whatever the path names (a run, a
checkpoint, an export or an `import-elmo` directory), the export is one `model.safetensors` with
fp32 weights, beside `config.yaml`, `vocab.txt` and `corpus.json` (elmo_dist.runs, the export
layout). ZeRO checkpoints are consolidated from their fp32 master shards, so bf16 training
exports full-precision weights.
"""
from __future__ import annotations

from pathlib import Path

from elmo_dist.errors import OutputError
from elmo_dist.files import need_space, refuse_overwrite, same_file, writable_dir
from elmo_dist.runs import EXPORT_FILES, SavedRun, open_run
from elmo_dist.runtime.checkpoint import write_export


def fp32_weights(saved: SavedRun) -> dict:
    """The weights in fp32: from ZeRO's fp32 master shards where the checkpoint has them."""
    ds_dir = saved.path / "deepspeed"
    if ds_dir.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="state")
        return {k.removeprefix("module."): v.float() for k, v in state.items()}
    return {k: v.float() for k, v in saved.weights().items()}


def export_run(path: str | Path, out: str | Path | None = None) -> dict:
    """Write the export layout of `path`'s weights to `out` (default RUN/export). The output is
    checked first: never the directory exported from or any file it reads, writable, and with room
    for the weights; it is complete only once `export.json` is written (elmo_dist.runtime.checkpoint.write_export)."""
    saved = open_run(path)
    out = Path(out) if out else saved.home / "export"
    for d in (saved.path, saved.home):
        if same_file(out, d):
            raise OutputError(f"{out}: is the directory exported from; choose another --out")
    refuse_overwrite([out / name for name in EXPORT_FILES], saved.source_files(), "export")
    writable_dir(out, "--out")
    weights = fp32_weights(saved)
    need_space(out, sum(4 * v.numel() for v in weights.values()) + (1 << 20), "the exported weights")
    meta = {"source": str(saved.path), "step": saved.step, "from": saved.kind}
    if not saved.has_softmax:  # an import without a softmax stays one: evaluate must refuse it
        meta["softmax"] = False
    write_export(out, weights, saved.config, meta, home=saved.home)
    return {"out": str(out), "step": saved.step, "source": str(saved.path)}
