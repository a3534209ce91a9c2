"""Multi-process training on PyTorch's own engine: torchrun, DistributedDataParallel, gloo or nccl.

``torchrun --nproc-per-node N -m cnnkit train ...`` starts N copies of cnnkit with RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous in the environment. Each copy holds all the data in
memory and walks the same seeded order; at every step each rank trains on its own contiguous
share of the global batch, and DDP averages the gradients. The batch size in a recipe is the
global batch, so N processes take the same steps one process would.

BatchNorm is per rank (no SyncBatchNorm: it would add a collective per layer per step, and
on CPU gloo that costs more than the batch statistics are worth). Its running statistics are
averaged across ranks at the end of every epoch, so validation, checkpoints and the final
weights are the same on every rank.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; one process alone is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder and prints."""
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (shares differ by at most one)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world_size() -> int:
    """Processes of this job on this machine (they share its cores)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def initialize(device: str = "auto") -> tuple[Distributed, str]:
    """Join the job torchrun started (if any); return this process's place and device.

    CPU processes talk over gloo; CUDA processes over nccl, one GPU each (``cuda:LOCAL_RANK``).
    """
    if not launched_by_torchrun():
        return Distributed(), device
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A rank that never arrives (a crashed machine) fails the job after this, not never.
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10)
        )
    return current(), device


def current() -> Distributed:
    """The job this process has joined (see ``initialize``), or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def shutdown(synchronize: bool = False) -> None:
    """Leave the job. ``synchronize``: first wait for every rank, so that none tears down its
    connections while a peer's last collective is in flight (gloo then aborts the process:
    "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of ``values`` over all ranks (float64, so counts and sums stay exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_states(
    states: dict[str, torch.Tensor], count: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], int]:
    """Metric states (``engine.metrics``) and their image count summed over all ranks, in one call."""
    names = list(states)
    flat = [torch.as_tensor(states[name], dtype=torch.float64).flatten() for name in names]
    vector = torch.cat([*flat, torch.tensor([float(count)], dtype=torch.float64)]).to(device)
    dist.all_reduce(vector)
    vector = vector.cpu()
    summed, start = {}, 0
    for name, part in zip(names, flat, strict=True):
        shape = torch.as_tensor(states[name]).shape
        summed[name] = vector[start : start + len(part)].view(shape)
        start += len(part)
    return summed, int(vector[-1])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: all ranks must stop at the same step."""
    return all_reduce_sum([float(flag)], device)[0] > 0


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics (float buffers) across ranks."""
    world_size = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


@torch.no_grad()
def check_ranks_agree(model: nn.Module, device: torch.device) -> None:
    """Fail loudly if the ranks' weights have drifted apart (they must be identical)."""
    checksum = torch.stack([p.double().sum() for p in model.state_dict().values() if p.is_floating_point()])
    lowest, highest = checksum.clone(), checksum.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    if not torch.equal(lowest, highest):
        raise RuntimeError("The ranks' weights differ after training: the distributed job is out of sync.")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel over its trainable parameters."""
    device_ids = [device.index] if device.type == "cuda" else None
    # Rank 0's BatchNorm statistics go to every rank before each forward pass.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=True)
