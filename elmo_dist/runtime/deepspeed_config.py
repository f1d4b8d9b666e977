"""DeepSpeed's JSON, generated from the run config: the run config is the one source of truth.

    ds = deepspeed_config(cfg, world_size=8)

Micro batch, accumulation, clipping, precision, ZeRO stage and offload all come from `cfg`. A
hand-tuned template (`dist.deepspeed_config`, e.g. configs/deepspeed/zero3.json) may add keys
such as bucket sizes; where it sets a key the run config also sets, the two must agree, or this
raises a ConfigError naming the key, rather than silently picking one.
"""
from __future__ import annotations

import json
from pathlib import Path

from elmo_dist.errors import ConfigError


def _generated(cfg, world_size: int) -> dict:
    d = cfg.dist
    # the NaN guard's promise under ZeRO rests on DeepSpeed's own overflow check, which drops a step
    # whose gradient norm is not finite (fp32: through the norm; bf16: check_grad_overflow); a
    # template that turned either off is refused by the agreement check below
    zero: dict = {"stage": d.zero_stage, "compute_grad_norm": True}
    if d.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    if d.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu"}
    if d.zero_stage == 3:
        # consolidated 16-bit weights on save, so that every checkpoint holds a plain model file
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": d.gradient_accumulation_steps,
        "train_batch_size": cfg.data.batch_size * d.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": d.mixed_precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": d.mixed_precision == "fp16", "loss_scale": 0},  # 0 = dynamic loss scaling
        # our optimizer is a plain torch one (Adagrad or Adam); DeepSpeed must not swap it for its own
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _check_agree(template: dict, generated: dict, path: str, prefix: str = "") -> None:
    for key, value in template.items():
        if key not in generated:
            continue
        full = prefix + key
        if isinstance(value, dict) and isinstance(generated[key], dict):
            _check_agree(value, generated[key], path, full + ".")
        elif value != "auto" and value != generated[key]:
            raise ConfigError(f"{path}: '{full}' is {value!r} but the run config gives {generated[key]!r}; "
                              "change one of them (or write \"auto\" in the template)")


def _merge(template: dict, generated: dict) -> dict:
    out = dict(template)
    for key, value in generated.items():
        out[key] = _merge(template[key], value) if isinstance(template.get(key), dict) and isinstance(value, dict) \
            else value
    return out


def deepspeed_config(cfg, world_size: int) -> dict:
    generated = _generated(cfg, world_size)
    path = cfg.dist.deepspeed_config
    if not path:
        return generated
    try:
        template = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: DeepSpeed config (dist.deepspeed_config) not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    _check_agree(template, generated, path)
    return _merge(template, generated)
