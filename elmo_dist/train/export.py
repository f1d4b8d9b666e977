"""`elmo-dist export RUN_DIR [--out DIR]`: consolidated fp32 weights (safetensors) plus the config.

    elmo-dist export runs/small --out models/small

Whatever trained the run (one process, DDP, ZeRO 1-3), the export is one `model.safetensors` with
fp32 weights, beside `config.yaml`, `vocab.txt` and `corpus.json`. `finetune`, `embed` and
`evaluate` take the export directory wherever they take a run directory. ZeRO checkpoints are
consolidated from their fp32 master shards, so bf16 training exports full-precision weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from elmo_dist.train import checkpoint as ckpt


def fp32_weights(found: Path) -> dict:
    ds_dir = found / "deepspeed"
    if ds_dir.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="state")
        return {k.removeprefix("module."): v.float() for k, v in state.items()}
    return {k: v.float() for k, v in ckpt.load_model_state(found).items()}


def export_run(path: str | Path, out: str | Path | None = None) -> dict:
    found = ckpt.resolve(path)
    run_dir = ckpt.run_dir_of(found)
    out = Path(out) if out else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.safetensors.tmp"
    ckpt.write_model(tmp.parent, fp32_weights(found), name=tmp.name)
    tmp.replace(out / "model.safetensors")
    shutil.copyfile(found / "config.yaml", out / "config.yaml")
    for name in ("vocab.txt", "vocab.counts.npy", "corpus.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    step = json.loads((found / "trainer_state.json").read_text())["step"]
    (out / "export.json").write_text(json.dumps({"source": str(found), "step": step}, indent=1))
    return {"out": str(out), "step": step, "source": str(found)}
