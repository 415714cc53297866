"""DDP or FSDP2 around the loss module, and the (collective) state-dict calls that work for both."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
ADAPTER_ONLY = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap(loss_module: nn.Module, strategy: str, decoder_layers: nn.ModuleList, device: torch.device) -> nn.Module:
    """DDP (each worker a full replica) or FSDP2 (each decoder layer sharded, then the rest).

    Everything else (embeddings, heads, a vision tower such as Emu2's) is in the root unit, gathered by
    every rank at each forward: a module that only some ranks run (Emu2's vision tower on a rank whose
    batch has no image) must not be a unit of its own, or the ranks' all-gathers would not match."""
    if not distributed():
        return loss_module.to(device)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # shard on the host first, so no GPU ever holds the whole model; then move shards and buffers
        for layer in decoder_layers:
            fully_shard(layer)
        fully_shard(loss_module)
        # a rank whose step saw no image gives the image branch no gradient: reduce zeros for it, or the
        # ranks' reduce-scatters would not match
        loss_module.set_reduce_scatter_unused_params(True)
        return loss_module.to(device)
    loss_module.to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    # a micro-batch without images leaves the image branch unused on that worker
    return nn.parallel.DistributedDataParallel(loss_module, device_ids=device_ids, find_unused_parameters=True)


def inner(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module, accumulating: bool):
    """Skip the gradient all-reduce on micro-batches that do not end a step (DDP and FSDP2)."""
    if not accumulating or not distributed():
        return contextlib.nullcontext()
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def fsdp_no_sync():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        return fsdp_no_sync()
    return contextlib.nullcontext()


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, CPU) trainable tensors keyed as in the PeftModel, on rank 0 ({} elsewhere). All ranks call it."""
    sd = get_model_state_dict(module, options=ADAPTER_ONLY)
    return {k.removeprefix("model."): v for k, v in sd.items()}  # LossModule.model is the PeftModel


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter name, on rank 0 (empty elsewhere). All ranks call it."""
    return get_optimizer_state_dict(module, optimizer, options=FULL)


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()
