"""Several processes training one model with PyTorch's own engine: torchrun + DistributedDataParallel.

A script started by `torchrun --nproc-per-node N` finds RANK, WORLD_SIZE and LOCAL_RANK in its
environment; `Ranks.from_env()` joins the process group (NCCL on GPUs, gloo on CPUs). Started as a
plain `python` script it is one process of a world of one, and every helper here does nothing, so
the single-process path stays the same code.
"""
from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank 0 alone writes files, logs and evaluates."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1   # processes on this machine, which share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def from_env(device_type: str) -> "Ranks":
        """Join torchrun's process group when launched by it; otherwise a world of one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return Ranks()
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                     int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over every rank (in place); itself in a world of one."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_across_ranks(values: list[float]) -> list[float]:
    """Each value's maximum over the ranks: how every rank takes the same decision (stop, validate)."""
    if not active():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)   # NCCL reduces GPU tensors only
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (all ranks hold equally many)."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_objects(value: Any) -> list[Any]:
    """[rank 0's value, rank 1's, ...] on every rank."""
    if not active():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (a codebook after a restart drawn at random) to every rank."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def state_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: the same on every rank while they hold the same model."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM becomes a flag that the training loop reads between updates.

    Under torchrun every rank receives the signal at a slightly different moment; the ranks agree on
    the flag (max_across_ranks) and stop at the same update, so rank 0 can save the run. A second
    Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
