"""Integer inference of a compressed network: its hidden layers add, shift and compare.

Spikes are 0/1 and a compressed layer's codes are in {-1, 0, +1}, so its synaptic input
``S = V z`` (``z``: the spikes, their sums where residual connections add, or those summed
over a pool window) is an integer made by additions and subtractions alone. BatchNorm folds into a gain ``g > 0`` and a shift ``b``
per channel (``fold.py``), ``I = g S + b``. With the decay ``a = 2^-k`` and ``n`` steps
since the neuron's last reset (at step ``r``), eq. 1 fires when

    u[t] = sum_{j=r..t} a^(t-j) (g S[j] + b) >= theta
    <=>  A[t] = sum_{j=r..t} 2^(k (j-r)) S[j]  >=  K[n] = ceil((theta 2^(kn) - b sum_{i=0..n} 2^(ki)) / g)

(both sides times ``2^(kn) / g > 0``). ``A`` is an integer kept by a shift and an add per
step, ``A += S << kn``; ``K`` holds ``T`` integers per channel, computed once in exact
rational arithmetic. Each neuron and step costs one shift-add and one integer comparison,
and the spikes are eq. 1's for the folded (real-valued) gain and shift, with no rounding.
The first layer, which sees the analog image, and the readout stay float as in the model.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .fold import FoldedBlock, fold_layers
from .neurons import eq1_neuron
from .quant import baked
from .structure import SpikingNetwork, consumers, input_pools, layers, network

LIMIT = 2**62  # |K| is clamped here: a threshold beyond any reachable A never or always fires
EXACT = 2**24  # integer sums up to this size are exact in the float32 synapse


def decay_shift(decay: float) -> int:
    """``k`` with ``decay = 2^-k`` (an integer ``k >= 0``); ``ConfigError`` otherwise."""
    k = -math.log2(decay) if 0 < decay <= 1 else -1.0
    if not (k >= 0 and k == int(k)):
        raise ConfigError(f"integer inference needs model.decay = 1, 1/2, 1/4, ... (a shift); "
                          f"got {decay}")
    return int(k)


def thresholds(f: FoldedBlock, theta: float, shift: int, timesteps: int) -> torch.Tensor:
    """``K[n, c]`` int64 ``[T, C]`` of the module docstring, exact."""
    theta = Fraction(theta)
    table = []
    for n in range(timesteps):
        grow, total = 1 << (shift * n), sum(1 << (shift * i) for i in range(n + 1))
        row = [math.ceil((theta * grow - Fraction(b) * total) / Fraction(g))
               for g, b in zip(f.gain.tolist(), f.shift.tolist())]
        table.append([min(max(v, -LIMIT), LIMIT) for v in row])
    return torch.tensor(table, dtype=torch.int64)


class IntegerLIF(nn.Module):
    """Eq. 1 on integers over ``[T, B, C, ...]`` synaptic sums: ``A += S << (k n)``, spike
    where ``A >= K[n, c]``, then ``A = 0, n = 0``; else ``n += 1``."""

    def __init__(self, table: torch.Tensor, shift: int):
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("grow", 2 ** (shift * torch.arange(table.shape[0])))

    def forward(self, sums_tb: torch.Tensor) -> torch.Tensor:
        channels = self.table.shape[1]
        sums = sums_tb.to(torch.int64)  # exact integers carried in float32
        index = torch.arange(channels, device=sums.device).view(-1, *[1] * (sums.dim() - 3))
        acc, n, spikes = torch.zeros_like(sums[0]), torch.zeros_like(sums[0]), []
        for s_t in sums:
            acc = acc + s_t * self.grow[n]
            fire = acc >= self.table.flatten().take(n * channels + index)
            spikes.append(fire.to(sums_tb.dtype))
            acc = torch.where(fire, 0, acc)
            n = torch.where(fire, 0, n + 1)
        return torch.stack(spikes)


def integer_model(model: nn.Module) -> SpikingNetwork:
    """A copy of a compressed ``SpikingNetwork`` whose hidden layers run on integers (module
    docstring); same interface, eval mode. The layers that read the network's input and the
    readout stay float. ``CheckpointError`` if a hidden layer has full-precision weights,
    ``ConfigError`` if a neuron does not run eq. 1 (``neurons.Eq1``) or its decay is not a
    power of 1/2."""
    folded = fold_layers(network(model, "integer inference"))
    net = baked(model).eval()
    sum_pools = set()
    for node in layers(net):
        f = folded[node.name]
        area, pools, analog = input_pools(net, node)
        if analog:
            continue
        if not f.compressed:
            raise CheckpointError(f"integer inference needs a ternary or binary model; layer "
                                  f"{node.name} has full-precision weights")
        fan_in = f.weight[0].numel() * area
        if fan_in >= EXACT:
            raise CheckpointError(f"layer {node.name}: a fan-in of {fan_in} is too large for "
                                  "exact integer sums in float32")
        block = node.module
        neuron = eq1_neuron(block.neuron, "integer inference", node.name)
        shift = decay_shift(neuron.decay)
        block.neuron = IntegerLIF(thresholds(f, neuron.threshold, shift, net.timesteps), shift)
        block.synapse.weight = nn.Parameter(f.weight.float(), requires_grad=False)
        block.synapse.bias = None
        block.norm = nn.Identity()
        sum_pools.update(pool.name for pool in pools)
    for pool in (node for node in net.nodes if node.name in sum_pools):
        readers = consumers(net, pool.name)
        if any(r.kind == "readout" or input_pools(net, r)[2] for r in readers):
            raise ConfigError(f"integer inference: pool {pool.name} feeds a float layer as well "
                              "as an integer one")
        pool.module.divisor_override = 1  # the sum over the window, its 1/area in the gain
    return net
