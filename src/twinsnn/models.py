"""Spiking CIFARNet (Wu et al. 2019), the network of the paper:

    128C3-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-Out

Built from a ``ModelConfig``: every channel and hidden count is scaled by ``width``. Each
conv is followed by BatchNorm and a layer of spiking neurons (``neuron``, LIF: eq. 1, with
the ``surrogate`` gradient); each hidden FC by an optional normalization (``fc_norm``),
spiking neurons and time-shared dropout. The image enters the first conv at every timestep
(direct encoding).
The output layer does not spike: its membrane potential integrates the input current
(``u[t] = r * u[t-1] + I[t]`` with ``r = readout_decay``) and the logits are ``sum_t u[t]``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import ModelConfig, from_flat
from .errors import ConfigError, lookup
from .layers import SpikingBlock, TimeSharedDropout, over_time
from .neurons import NEURONS, state_dtype

CIFARNET_CONVS = (128, 256, "P", 512, "P", 1024, 512)  # "P": 2x2 average pool
CIFARNET_FCS = (1024, 512)
FC_NORMS = ("batchnorm", "none")
SHAPE_KEYS = ("num_classes", "in_channels", "image_size")  # what a network takes from its data


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class SpikingCNN(nn.Module):
    """A stack of spiking conv blocks, spiking FC blocks and a non-spiking readout, as
    ``cfg`` (a ``ModelConfig``) says.

    Input ``[B, C, H, W]`` (static image, repeated over T) or ``[T, B, C, H, W]`` (frames).
    ``potentials`` returns the output membrane potentials ``[T, B, classes]``; ``forward``
    returns the logits ``[B, classes]``, their sum over T.
    """

    def __init__(self, convs, fcs, cfg: ModelConfig, num_classes: int, in_channels: int,
                 image_size):
        super().__init__()
        if cfg.fc_norm not in FC_NORMS:
            raise ConfigError(f"model.fc_norm must be one of {FC_NORMS}, got {cfg.fc_norm!r}")
        neuron = lookup(NEURONS, cfg.neuron, "model.neuron")
        height, width = image_size
        pools = sum(c == "P" for c in convs)
        if height % 2**pools or width % 2**pools:
            raise ConfigError(f"image size {height}x{width} must be divisible by {2**pools}")
        self.timesteps = cfg.timesteps
        self.readout_decay = cfg.readout_decay

        def spiking():
            return neuron(decay=cfg.decay, threshold=cfg.threshold, surrogate=cfg.surrogate)

        blocks, channels = [], in_channels
        for spec in convs:
            if spec == "P":
                blocks[-1].pool = nn.AvgPool2d(2)
                continue
            conv = nn.Conv2d(channels, spec, 3, padding=1, bias=False)
            blocks.append(SpikingBlock(conv, nn.BatchNorm2d(spec), spiking()))
            channels = spec
        self.convs = nn.ModuleList(blocks)
        features = channels * (height // 2**pools) * (width // 2**pools)
        blocks = []
        for hidden in fcs:
            norm = nn.BatchNorm1d(hidden) if cfg.fc_norm == "batchnorm" else nn.Identity()
            linear = nn.Linear(features, hidden, bias=cfg.fc_norm == "none")
            blocks.append(SpikingBlock(linear, norm, spiking(),
                                       dropout=TimeSharedDropout(cfg.dropout)))
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
        current_tb = over_time(self.out, x_tb)  # [T, B, classes]
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


def cifarnet(cfg: ModelConfig = ModelConfig(), num_classes: int = 10, in_channels: int = 3,
             image_size=(32, 32)) -> SpikingCNN:
    """The paper's spiking CIFARNet with every channel and hidden count scaled by ``cfg.width``."""
    convs = tuple(c if c == "P" else _scaled(c, cfg.width) for c in CIFARNET_CONVS)
    fcs = tuple(_scaled(n, cfg.width) for n in CIFARNET_FCS)
    return SpikingCNN(convs, fcs, cfg, num_classes, in_channels, image_size)


MODELS = {"cifarnet": cifarnet}


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int, image_size) -> SpikingCNN:
    """The network ``cfg.arch`` of ``MODELS``, for data of that many classes, channels and size."""
    return lookup(MODELS, cfg.arch, "model.arch")(cfg, num_classes, in_channels, image_size)


def model_spec(cfg: ModelConfig, num_classes: int, in_channels: int, image_size) -> dict:
    """What a file records to rebuild the network: every ``ModelConfig`` field and the shape of
    the data (JSON-able)."""
    return {**dataclasses.asdict(cfg), "num_classes": num_classes, "in_channels": in_channels,
            "image_size": list(image_size)}


def parse_spec(spec: dict) -> tuple[ModelConfig, int, int, tuple[int, int]]:
    """``(cfg, num_classes, in_channels, image_size)`` of a ``model_spec``, its values checked
    as config values are. ``ModelConfig`` fields it lacks take their defaults (files written
    before the field existed); keys that are neither fields nor ``SHAPE_KEYS`` are ignored."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a model spec is a mapping, not a {type(spec).__name__}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = from_flat({f"model.{k}": v for k, v in spec.items() if k in fields}).model
    num_classes, in_channels, size = (spec.get(k) for k in SHAPE_KEYS)
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            type(n) is int and n > 0 for n in (num_classes, in_channels, *size))):
        raise ConfigError("a model spec needs positive integers num_classes and in_channels "
                          "and an image_size of two")
    return cfg, num_classes, in_channels, tuple(size)


def build_from_spec(spec: dict) -> SpikingCNN:
    """The network a ``model_spec`` describes (see ``parse_spec``)."""
    return build_model(*parse_spec(spec))
