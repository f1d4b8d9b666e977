"""DeepSpeed's JSON comes from the run config; a template that disagrees is an error naming the key."""
import json

import pytest

from elmo_dist.config import PretrainConfig, load
from elmo_dist.errors import ConfigError
from elmo_dist.runtime.deepspeed_config import deepspeed_config

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def test_generated_from_the_run_config():
    cfg = load(PretrainConfig, None, ["dist.zero_stage=3", "dist.offload_optimizer=cpu", "dist.offload_params=cpu",
                             "dist.gradient_accumulation_steps=4", "data.batch_size=16", "optim.grad_clip=5",
                             "dist.mixed_precision=bf16"])
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 * 4 * 8 and ds["gradient_clipping"] == 5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


def test_shipped_templates_merge_their_extra_keys():
    cfg = load(PretrainConfig, None,
               ["dist.zero_stage=3", f"dist.deepspeed_config={REPO_CONFIGS / 'deepspeed/zero3.json'}"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["zero_optimization"]["stage3_prefetch_bucket_size"] == 50000000
    assert ds["train_micro_batch_size_per_gpu"] == cfg.data.batch_size  # "auto" filled from the run config


def test_a_disagreeing_template_is_an_error_naming_the_key(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = load(PretrainConfig, None, ["dist.zero_stage=2", f"dist.deepspeed_config={tmp_path / 't.json'}"])
    with pytest.raises(ConfigError, match=r"'zero_optimization.stage' is 3 but the run config gives 2"):
        deepspeed_config(cfg, world_size=2)


def test_bad_dist_values_name_their_key():
    for override, key in (("dist.zero_stage=5", "dist.zero_stage"), ("dist.offload_params=cpu", "dist.offload_params"),
                          ("dist.offload_optimizer=cpu", "dist.offload_optimizer")):
        with pytest.raises(ConfigError, match=key):
            load(PretrainConfig, None, [override])


@pytest.mark.parametrize("template,key", [({"bf16": {"check_grad_overflow": False}}, "bf16.check_grad_overflow"),
                                          ({"zero_optimization": {"compute_grad_norm": False}},
                                           "zero_optimization.compute_grad_norm")])
def test_a_template_may_not_turn_off_the_overflow_check_the_nan_guard_needs(tmp_path, template, key):
    """Under ZeRO the NaN guard relies on DeepSpeed dropping a step whose gradient norm is not finite."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(template))
    cfg = load(PretrainConfig, None, ["dist.zero_stage=2", f"dist.deepspeed_config={path}"])
    with pytest.raises(ConfigError, match=rf"'{key}' is False but the run config gives True"):
        deepspeed_config(cfg, world_size=2)
