"""Where training runs: device, mixed precision and data-parallel processes.

One :class:`Runtime` describes the process a training step runs in. Under ``torchrun``
(``WORLD_SIZE`` > 1) every process trains on its own share of each batch and gradients are
averaged with an all-reduce before every optimiser step (NCCL on GPUs, gloo on the CPU).
Averaging gradients by hand rather than wrapping modules in ``DistributedDataParallel``
keeps one code path for the DDPM and the GANs, whose R1 and path-length penalties take
gradients of gradients, which DDP's hooks do not support.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from synthmri.training import select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The process a training step runs in.

    Attributes:
        device: where networks and batches live.
        rank: this process's index among ``world_size`` (0 when not distributed).
        world_size: number of data-parallel processes.
        mixed_precision: run forward passes under bfloat16 autocast (CUDA only).
    """

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    mixed_precision: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process logs, checkpoints and registers (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when mixed precision is on, else a no-op context."""
        if self.mixed_precision:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def average_gradients(self, module: nn.Module) -> None:
        """All-reduce the mean of every parameter gradient across processes (no-op alone).

        Parameters without a gradient this step (a progressive network's unused levels)
        are skipped; every process skips the same ones because all run the same graph.
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (no-op alone)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any (e.g. a SIGTERM seen by one)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather_objects(self, obj: object) -> list[object]:
        """`obj` from every process, in rank order (``[obj]`` alone)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def process_rank() -> int:
    """This process's rank among ``torchrun``'s processes (``$RANK``; 0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def runtime(mixed_precision: bool = True) -> Iterator[Runtime]:
    """The runtime of this process, set up for the duration of the context.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``; with a world
    size above one it joins the process group (and leaves it on exit). Picks CUDA device
    ``LOCAL_RANK`` when CUDA is available, else the CPU; mixed precision is honoured on CUDA
    only (bfloat16 on the CPU is slower and changes results).

    Args:
        mixed_precision: the config's request for bfloat16 autocast.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = process_rank()
    device = select_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    joined = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            joined = True
        log.info("data-parallel training: rank %d of %d on %s", rank, world_size, device)
    try:
        yield Runtime(device=device, rank=rank, world_size=world_size,
                      mixed_precision=bool(mixed_precision) and device.type == "cuda")
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def device_of(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter or buffer (the CPU when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")
