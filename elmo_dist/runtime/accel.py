"""The one place that builds the Accelerator: device, precision, process group, accumulation, DeepSpeed.

    accelerator = build_accelerator("auto", cfg.dist)                                   # fine-tuning
    accelerator = build_accelerator(device, cfg.dist, "bf16", 2, deepspeed=ds_config)   # pretraining

A single process, `torchrun --nproc_per_node N`, `accelerate launch --multi_gpu` and srun all come
through here; rank, world size and the master address come from the environment, which the launcher
set (for srun tasks, `elmo_dist.launch.slurm_env` fills it in before the command starts).
Two traps are turned into clear errors: a WORLD_SIZE > 1 with no launcher around it, and an
Accelerator that sees fewer processes than the launcher started (N independent copies, no sync).
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Callable

import torch

if not torch.cuda.is_available():
    # tells DeepSpeed (imported by Accelerate) there is no GPU, instead of a warning on every start
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs  # noqa: E402

from elmo_dist.errors import ConfigError, LaunchError  # noqa: E402
from elmo_dist.runs import resolve_device  # noqa: E402
from elmo_dist.runtime.logs import log  # noqa: E402


def _check_launch_env() -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with "
                              "torchrun, `accelerate launch` or srun (see docs/distributed-and-slurm.md)")
    return world


def _single_process_group() -> None:
    """DeepSpeed always wants a process group; a plain `elmo-dist pretrain` (no launcher) gets a
    group of one on localhost, as torchrun --nproc_per_node 1 would set it up (debug mode)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:  # a free port; the group is made within the next second
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


def resolve_precision(requested: str, device: str) -> str:
    """`dist.mixed_precision` as it will run: auto is bf16 on CUDA and no (fp32) elsewhere; fp16 without
    CUDA is a ConfigError (its loss scaling is CUDA-only)."""
    if requested == "auto":
        return "bf16" if device == "cuda" else "no"
    if requested == "fp16" and device != "cuda":
        raise ConfigError("config key 'dist.mixed_precision' is fp16, which needs CUDA; use bf16 or no on CPU")
    return requested


def build_accelerator(device: str, dist, mixed_precision: str = "no", gradient_accumulation_steps: int = 1,
                      deepspeed: Callable[[int], dict] | None = None) -> Accelerator:
    """The Accelerator of every command that trains: `device` (auto, cpu, cuda), the process group
    that torchrun, `accelerate launch` or srun started (formed within `dist.connect_timeout_s`, its
    collectives bounded by `dist.timeout_minutes`, on `dist.backend`), the precision, and the
    accumulation. `deepspeed`, given the world size, returns DeepSpeed's config: then the model is
    ZeRO-partitioned (a plain single process gets a process group of one, which DeepSpeed needs)."""
    device = resolve_device(device)
    mixed_precision = resolve_precision(mixed_precision, device)
    expected = _check_launch_env()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and deepspeed is None:
        raise ConfigError("launched with an Accelerate DeepSpeed config, but config key 'dist.zero_stage' is 0; "
                          "choose ZeRO in the run config (dist.zero_stage) and launch with "
                          "configs/accelerate/deepspeed.yaml")
    if deepspeed is not None:
        if expected == 1:
            _single_process_group()
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed(expected))
        # no cpu=True here: Accelerate would silently drop the DeepSpeed plugin; a process group is
        # always needed, or on CPU every rank believes it is rank 0
        return _formed(lambda handlers: Accelerator(deepspeed_plugin=plugin, mixed_precision=mixed_precision,
                                                    kwargs_handlers=handlers), device, dist, expected, True)
    return _formed(lambda handlers: Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision,
                                                kwargs_handlers=handlers,
                                                gradient_accumulation_steps=gradient_accumulation_steps),
                   device, dist, expected, expected > 1)


def _formed(make, device: str, dist, expected: int, group: bool) -> Accelerator:
    """`make(kwargs_handlers)` builds the Accelerator, which forms the process group (when `group`)
    within dist.connect_timeout_s; the group's collectives then get dist.timeout_minutes.

    A process that died or never started used to keep the others waiting in the rendezvous or in
    gloo's connect for the whole collective timeout (30 minutes), then fail with a traceback; now
    the wait is bounded and ends in one LaunchError line. Raises ConfigError when the Accelerator
    sees fewer processes than the launcher started.
    """
    backend = dist.backend if dist.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    # a process-group spec on a single process makes Accelerate look for a group that isn't there
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=dist.connect_timeout_s))] \
        if group else []
    try:
        accelerator = make(handlers)
    except RuntimeError as e:  # torch's DistError family, gloo's "connectFullMesh failed", ...
        if not group:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300].rstrip(".")
        raise LaunchError(
            f"could not form the process group of {expected} process(es) ({backend}, rendezvous at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}) within dist.connect_timeout_s="
            f"{dist.connect_timeout_s}: {first}. A process died, never started or cannot reach the others; "
            "see their logs") from None
    if group and torch.distributed.is_initialized():
        # torch has no public setter for the default group's timeout after init_process_group
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(timedelta(minutes=dist.timeout_minutes))
    if accelerator.num_processes != expected:
        raise ConfigError(
            f"WORLD_SIZE={expected} but the Accelerator sees {accelerator.num_processes} process(es); "
            "launch with torchrun or `accelerate launch --multi_gpu` so that the processes form one group")
    return accelerator


def shut_down(accelerator: Accelerator) -> None:
    """End the run's process group so that every rank exits cleanly.

    After the last collective returns, gloo's worker threads are still releasing the finished work
    objects, which hold that collective's tensors. If the interpreter begins to finalize meanwhile,
    a worker dropping a tensor's Python object cannot take the GIL, is force-exited inside a C++
    destructor, and the rank aborts with "terminate called without an active exception" (SIGABRT;
    pytorch/pytorch#190489): 7 of 50 finished 2-process runs did, here. A moment's sleep, which
    releases the GIL, lets the workers finish first (0 of 30 aborted with it).
    """
    group = torch.distributed.is_initialized()  # several processes, or DeepSpeed's group of one
    accelerator.wait_for_everyone()  # a rank that destroys the group early makes the others abort
    accelerator.end_training()
    if group:
        time.sleep(0.2)


def ranks_in_sync(acc: Accelerator, model: torch.nn.Module) -> bool:
    """Data parallelism must keep every rank's weights identical: whether they are (a float64
    fingerprint of all weights, gathered once, at the end of a run)."""
    if acc.num_processes == 1:
        return True
    params = [p.detach().double() for p in model.parameters()]
    fingerprint = torch.stack([sum(p.sum() for p in params), sum(p.pow(2).sum() for p in params)])
    gathered = acc.gather(fingerprint[None].to(acc.device)).view(acc.num_processes, 2)
    same = bool((gathered == gathered[0]).all())
    if not same:
        log.error("ranks diverged: weight fingerprints %s", gathered.tolist())
    return same


def share(acc: Accelerator, n: int) -> range:
    """This process's contiguous share of n items (shares differ by at most one; all of them with one
    process), so that every process count covers the same items in the same order."""
    rank, world = acc.process_index, acc.num_processes
    return range(n * rank // world, n * (rank + 1) // world)


def broadcast(acc: Accelerator, obj):
    """The main process's `obj` (any picklable value), on every process."""
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def gather(acc: Accelerator, obj) -> list:
    """Every process's `obj` (any picklable value), in rank order."""
    if acc.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])
