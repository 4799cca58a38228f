"""Data-parallel training over the processes ``torchrun`` starts; a no-op in one process.

Every rank computes the global batch a single process would (the same seeded order and
augmentation draws) and trains on its slice of it (``World.shard``); dropout masks are drawn
for the global batch and sliced alike. Each rank's loss is its share of the global batch's
loss (``losses``: a batch mean weighted by ``share`` = local / global batch size, a sum as
it is), so gradients are summed over ranks (``Cohort.backward``), not averaged: the summed
matching term of eq. 5 is not divided by the number of ranks and cross-entropy comes out as
the global batch mean. BatchNorm statistics are those of the global batch
(``train.sync_batchnorm``): ``torch.nn.SyncBatchNorm`` on CUDA, ``SyncedBatchNorm`` on the
CPU, where PyTorch's does not run. NCCL on CUDA, gloo on the CPU.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from .errors import TwinsnnError
from .layers import TimeSharedDropout
from .neurons import running_average_factor

# the differentiable collectives SyncedBatchNorm needs; their successors in
# torch.distributed._functional_collectives are differentiable only in recent releases
warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated",
                        FutureWarning)
# no buffer broadcast at each forward: with synchronized BatchNorm every rank's are the same,
# without it rank 0 keeps (and writes) its own
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or with its environment)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks; ``World()`` is one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    active: bool = False  # in a process group
    owns_group: bool = False  # the group was created by ``join`` (and is destroyed by ``leave``)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA rank's own GPU (``LOCAL_RANK``); the CPU stays the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def agree(self, fn, *args):
        """``fn(*args)`` on every rank; a ``TwinsnnError`` on any rank is raised on all, so
        none is left waiting for the others."""
        if not self.active:
            return fn(*args)
        result, error = None, None
        try:
            result = fn(*args)
        except TwinsnnError as e:
            error = str(e)
        errors = [None] * self.size
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise TwinsnnError(first)
        return result

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (in place)."""
        if self.active:
            dist.all_reduce(values)
        return values

    def shard(self, members: list, x: torch.Tensor, y: torch.Tensor):
        """This rank's contiguous slice of the global batch ``x`` (``[B, ...]``, or time-major
        ``[T, B, ...]``), ``y`` ``[B]``, and its ``share`` = slice size / B. The members'
        dropout draws its masks for all B samples and keeps the slice."""
        b = len(y)
        lo, hi = self.rank * b // self.size, (self.rank + 1) * b // self.size
        for member in members:
            for module in member.modules():
                if isinstance(module, TimeSharedDropout):
                    module.shard = (lo, hi, b)
        x = x[:, lo:hi] if x.dim() == 5 else x[lo:hi]
        return x, y[lo:hi], (hi - lo) / b

    def parallel(self, members: list, device: torch.device) -> nn.Module:
        """The members as one ``DistributedDataParallel`` module whose forward returns every
        member's output potentials. DDP hooks each parameter where the modules hold it when
        it is built, so it is built again whenever they change (a quantization
        parametrization moves the weight it wraps)."""
        return nn.parallel.DistributedDataParallel(
            Members(members), device_ids=[device] if device.type == "cuda" else None,
            **_NO_BUFFER_SYNC)


def synchronize_batchnorm(members: list, device: torch.device) -> None:
    """BatchNorm over the global batch in every member, in place (the members keep their
    parameters and buffers, so optimizer and checkpoints are as before):
    ``nn.SyncBatchNorm`` on CUDA, ``SyncedBatchNorm`` elsewhere."""
    for member in members:
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(member)
        else:
            _synced_batchnorm(member)


def join(device: torch.device) -> World:
    """Join ``torchrun``'s process group (NCCL for ``device`` CUDA, else gloo) if launched by
    it; ``World()`` otherwise."""
    if not launched():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank, True, owns)


def leave(world: World, cohort=None) -> None:
    """Leave the process group ``join`` made; the ``cohort``'s DDP module is dropped first, so
    it never outlives its group (a rank could hang in its teardown otherwise)."""
    if cohort is not None:
        cohort.parallel = None
    if world.owns_group:
        dist.destroy_process_group()


def writer_process() -> bool:
    """Whether this process speaks for its run: the only one, or rank 0 under ``torchrun``."""
    return int(os.environ.get("RANK", 0)) == 0


class Members(nn.Module):
    """The members of a cohort as one module: ``x -> [member(x), ...]``."""

    def __init__(self, members: list):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self.members]


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on any backend: in training, the per-channel count and
    sum, then the sum of squared deviations from the global mean, are all-reduced over ranks
    (differentiable, so the gradients are those of the global batch as well), over
    ``[N, C, ...]`` inputs. Evaluation uses the running statistics, as ``nn.BatchNorm``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if x.dtype in (torch.bfloat16, torch.float16):  # autocast: statistics in float32
            x = x.float()
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                m = running_average_factor(self)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return out


def _synced_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm below ``module`` by a ``SyncedBatchNorm`` holding the same
    parameter and buffer tensors."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum,
                                     child.affine, child.track_running_stats)
            for key, value in [*child._parameters.items(), *child._buffers.items()]:
                setattr(synced, key, value)
            setattr(module, name, synced.train(child.training))
        else:
            _synced_batchnorm(child)
