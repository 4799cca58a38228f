"""Spiking CIFARNet (Wu et al. 2019), the network of the paper:

    128C3-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-Out

Every channel and hidden count is scaled by ``width``. Each conv is followed by BatchNorm
and a LIF layer; each hidden FC by an optional normalization (``fc_norm``), a LIF layer and
time-shared dropout. The image enters the first conv at every timestep (direct encoding).
The output layer does not spike: its membrane potential integrates the input current
(``u[t] = r * u[t-1] + I[t]`` with ``r = readout_decay``) and the logits are ``sum_t u[t]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .layers import SpikingBlock, TimeSharedDropout, fold, unfold
from .neurons import LIF, state_dtype

CIFARNET_CONVS = (128, 256, "P", 512, "P", 1024, 512)  # "P": 2x2 average pool
CIFARNET_FCS = (1024, 512)
FC_NORMS = ("batchnorm", "none")


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class SpikingCNN(nn.Module):
    """A stack of spiking conv blocks, spiking FC blocks and a non-spiking readout.

    Input ``[B, C, H, W]`` (static image, repeated over T) or ``[T, B, C, H, W]`` (frames).
    ``potentials`` returns the output membrane potentials ``[T, B, classes]``; ``forward``
    returns the logits ``[B, classes]``, their sum over T.
    """

    def __init__(self, convs, fcs, num_classes: int, in_channels: int, image_size,
                 timesteps: int, dropout: float, fc_norm: str, decay: float,
                 threshold: float, readout_decay: float):
        super().__init__()
        if fc_norm not in FC_NORMS:
            raise ConfigError(f"model.fc_norm must be one of {FC_NORMS}, got {fc_norm!r}")
        height, width = image_size
        pools = sum(c == "P" for c in convs)
        if height % 2**pools or width % 2**pools:
            raise ConfigError(f"image size {height}x{width} must be divisible by {2**pools}")
        self.timesteps = timesteps
        self.readout_decay = readout_decay
        blocks, channels = [], in_channels
        for spec in convs:
            if spec == "P":
                blocks[-1].pool = nn.AvgPool2d(2)
                continue
            conv = nn.Conv2d(channels, spec, 3, padding=1, bias=False)
            blocks.append(SpikingBlock(conv, nn.BatchNorm2d(spec), LIF(decay, threshold)))
            channels = spec
        self.convs = nn.ModuleList(blocks)
        features = channels * (height // 2**pools) * (width // 2**pools)
        blocks = []
        for hidden in fcs:
            norm = nn.BatchNorm1d(hidden) if fc_norm == "batchnorm" else nn.Identity()
            linear = nn.Linear(features, hidden, bias=fc_norm == "none")
            blocks.append(SpikingBlock(linear, norm, LIF(decay, threshold),
                                       dropout=TimeSharedDropout(dropout)))
            features = hidden
        self.fcs = nn.ModuleList(blocks)
        self.out = nn.Linear(features, num_classes)

    def potentials(self, x: torch.Tensor) -> torch.Tensor:
        """Output membrane potentials ``[T, B, classes]``."""
        if x.dim() == 4:  # static [B, C, H, W]: first conv once, repeated over T
            x_tb = self.convs[0].forward_static(x, self.timesteps)
        elif x.dim() == 5:  # frames [T, B, C, H, W]
            x_tb = self.convs[0](x)
        else:
            raise ValueError(f"expected [B,C,H,W] or [T,B,C,H,W], got {tuple(x.shape)}")
        for block in self.convs[1:]:
            x_tb = block(x_tb)
        x_tb = x_tb.flatten(2)  # [T, B, C*H*W]
        for block in self.fcs:
            x_tb = block(x_tb)
        current_tb = unfold(self.out(fold(x_tb)), x_tb.shape[0])  # [T, B, classes]
        current_tb = current_tb.to(state_dtype(current_tb.dtype))  # float32 under autocast
        if self.readout_decay == 0.0:
            return current_tb
        u, potentials = torch.zeros_like(current_tb[0]), []
        for current in current_tb:
            u = self.readout_decay * u + current
            potentials.append(u)
        return torch.stack(potentials)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``: the output potentials summed over T."""
        return self.potentials(x).sum(0)


def cifarnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
             timesteps: int = 5, dropout: float = 0.2, image_size=(32, 32),
             fc_norm: str = "batchnorm", decay: float = 0.5, threshold: float = 1.0,
             readout_decay: float = 0.5) -> SpikingCNN:
    """The paper's spiking CIFARNet with every channel and hidden count scaled by ``width``."""
    convs = tuple(c if c == "P" else _scaled(c, width) for c in CIFARNET_CONVS)
    fcs = tuple(_scaled(n, width) for n in CIFARNET_FCS)
    return SpikingCNN(convs, fcs, num_classes, in_channels, image_size, timesteps, dropout,
                      fc_norm, decay, threshold, readout_decay)


MODELS = {"cifarnet": cifarnet}


def build_model(arch: str, **kwargs) -> SpikingCNN:
    """Look up ``arch`` in ``MODELS`` and build it."""
    if arch not in MODELS:
        raise ConfigError(f"unknown model {arch!r}; choose one of {sorted(MODELS)}")
    return MODELS[arch](**kwargs)
