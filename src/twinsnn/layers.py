"""Building blocks over time-major tensors ``x_tb = [T, B, ...]``.

Convolutions, BatchNorm and linear layers see time folded into the batch
(``[T*B, ...]``), so each runs once per forward instead of once per timestep.
"""
from __future__ import annotations

import torch
from torch import nn


def fold(x_tb: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T*B, ...]``."""
    return x_tb.flatten(0, 1)


def unfold(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """``[T*B, ...] -> [T, B, ...]``."""
    return x.unflatten(0, (timesteps, -1))


def over_time(module: nn.Module, x_tb: torch.Tensor) -> torch.Tensor:
    """``module`` run once over ``x_tb = [T, B, ...]`` with time folded into the batch."""
    return unfold(module(fold(x_tb)), x_tb.shape[0])


class TimeSharedDropout(nn.Module):
    """Dropout whose mask is drawn once per sample and shared by all T timesteps. With
    ``shard = (lo, hi, B)`` (a data-parallel rank holding samples ``lo:hi`` of a batch of B)
    the masks are drawn for all B samples and rows ``lo:hi`` kept: those one process draws."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.shard = None

    def forward(self, x_tb: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x_tb
        if self.shard is None:
            keep = torch.empty_like(x_tb[0]).bernoulli_(1.0 - self.p)
        else:
            lo, hi, batch = self.shard
            keep = x_tb.new_empty((batch, *x_tb.shape[2:])).bernoulli_(1.0 - self.p)[lo:hi]
        return x_tb * (keep / (1.0 - self.p))  # [B, ...] broadcasts over T

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SpikingBlock(nn.Module):
    """``synapse -> norm -> neuron`` over ``[T, B, ...]``: one spiking layer. The neuron maps
    currents ``[T, B, ...]`` to spikes of the same shape, or, where its ``fuse_norm`` is on,
    the synapse's output and the norm."""

    def __init__(self, synapse: nn.Module, norm: nn.Module, neuron: nn.Module):
        super().__init__()
        self.synapse = synapse
        self.norm = norm
        self.neuron = neuron

    def forward(self, x_tb: torch.Tensor) -> torch.Tensor:
        x_tb = over_time(self.synapse, x_tb)
        if getattr(self.neuron, "fuse_norm", False):  # the neuron runs the norm itself
            return self.neuron(x_tb, self.norm)
        return self.neuron(over_time(self.norm, x_tb))

    def forward_static(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """Input constant over time ``[B, ...]``: the synapse and norm run once, not T times."""
        current = self.norm(self.synapse(x))
        return self.neuron(current.expand(timesteps, *current.shape))
