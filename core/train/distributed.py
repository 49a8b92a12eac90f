"""The only module that knows about ranks: the process group, each rank's share of a batch, the sums the
loss needs, wrapping the model for data-parallel or fully sharded training, and gathering it to save.

With one process every function here is the identity or a no-op, so the loop reads the same either
way. Under `torchrun` or `accelerate launch` (WORLD_SIZE > 1 in the environment) the process group is
initialised from the environment (`env://`: the launchers' rendezvous flags work as they are): NCCL
on GPUs, gloo on the CPU. The engine is PyTorch's own: DDP, or FSDP2's `fully_shard` with each decoder
layer a unit; the only collectives written here are the sums of token counts and losses.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from core.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # "ddp" or "fsdp"; irrelevant with one process

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(strategy: str, device: torch.device) -> Dist:
    """Join the process group the launcher described, or return the single-process Dist."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(strategy=strategy)
    if not torch_dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run a single process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return Dist(torch_dist.get_rank(), world_size, local_rank, strategy)


def local_device(dist: Dist, device: torch.device) -> torch.device:
    """Each rank's own GPU; the CPU is shared."""
    return torch.device("cuda", dist.local_rank) if device.type == "cuda" and dist.active else device


def close(dist: Dist) -> None:
    if dist.active and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.active:
        torch_dist.barrier()


def from_main(dist: Dist, value):
    """Rank 0's value on every rank (what must be decided once for all, such as a store's snapshot)."""
    if not dist.active:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first(dist: Dist):
    """Rank 0 runs the block first (filling a cache, say); the other ranks run it once rank 0 is done."""
    if not dist.is_main:
        barrier(dist)
    yield
    if dist.is_main:
        barrier(dist)


def fused_optimizer_ok(dist: Dist) -> bool:
    """Fused AdamW takes plain tensors; FSDP's sharded parameters go through the foreach path."""
    return not (dist.active and dist.strategy == "fsdp")


def sum_across(dist: Dist, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks, in one all-reduce (float64: token counts stay exact)."""
    if not dist.active:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def sum_tensor(dist: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sums over all ranks of a device tensor, without reading it on the host (float64 across ranks)."""
    if not dist.active:
        return tensor
    tensor = tensor.double()
    torch_dist.all_reduce(tensor)
    return tensor


def any_across(dist: Dist, flag: bool, device: torch.device) -> bool:
    return bool(sum_across(dist, [float(flag)], device)[0]) if dist.active else flag


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A reduced result as a plain tensor; a sharded (DTensor) one is gathered first."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def all_finite(tensors, dist: Dist, device: torch.device) -> bool:
    """Whether every element of every tensor is finite, on every rank (each checks its own shards)."""
    local = all(bool(torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all()) for t in tensors)
    return not any_across(dist, not local, device)


def own_part(dist: Dist, parts: list):
    """This rank's part of a global batch split into one part per process."""
    return parts[dist.rank]


def wrap(module: torch.nn.Module, dist: Dist, layers, amp_dtype: torch.dtype) -> tuple[torch.nn.Module, str | None]:
    """DDP, or FSDP2 with each decoder layer a unit; returns the module to call and a description for the log."""
    if not dist.active:
        return module, None
    if dist.strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(module), f"data parallel (DDP) over {dist.world_size} " \
                                                                  "processes"
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) \
        if amp_dtype != torch.float32 else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module, f"fully sharded (FSDP2) over {dist.world_size} processes, {len(layers)} layer units"


@contextmanager
def gradient_sync(module: torch.nn.Module, dist: Dist, sync: bool):
    """Skip the gradient all-reduce on micro-batches before an optimizer step's last."""
    if dist.active and dist.strategy == "fsdp":
        module.set_requires_gradient_sync(sync)
    with module.no_sync() if dist.active and dist.strategy == "ddp" and not sync else nullcontext():
        yield


def full_model_state(module: torch.nn.Module, dist: Dist) -> dict | None:
    """The whole model's weights for saving (None where the plain `save_pretrained` path needs none).

    With FSDP every rank takes part in the gather and only rank 0 receives the tensors, on the CPU.
    """
    if not (dist.active and dist.strategy == "fsdp"):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


def optimizer_state(module: torch.nn.Module, optimizer, dist: Dist) -> dict:
    """The optimizer state to checkpoint: gathered whole on rank 0 with FSDP, the plain state dict otherwise."""
    if not (dist.active and dist.strategy == "fsdp"):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer, state: dict, dist: Dist) -> None:
    if not (dist.active and dist.strategy == "fsdp"):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
