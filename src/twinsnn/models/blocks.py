"""What the architectures are built of, from a ``ModelConfig``: scaled channel counts,
spiking layers (synapse -> norm -> neuron) with the configured neuron, and plain stacks of
them (``plain_network``)."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError, lookup
from ..layers import SpikingBlock, TimeSharedDropout
from ..neurons import NEURONS
from ..structure import Node, SpikingNetwork

FC_NORMS = ("batchnorm", "none")  # normalization after a hidden fully connected layer


def scaled(n: int, width: float) -> int:
    """``n`` channels at width multiplier ``width``, at least 1."""
    return max(1, round(n * width))


def neuron(cfg) -> nn.Module:
    """A layer of ``cfg.neuron`` neurons with the config's decay, threshold and surrogate."""
    return lookup(NEURONS, cfg.neuron, "model.neuron")(
        decay=cfg.decay, threshold=cfg.threshold, surrogate=cfg.surrogate)


def conv_layer(cfg, in_channels: int, out_channels: int, kernel: int = 3,
               stride: int = 1) -> SpikingBlock:
    """``kernel x kernel`` conv (no bias, "same" padding) -> BatchNorm2d -> neurons."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
    return SpikingBlock(conv, nn.BatchNorm2d(out_channels), neuron(cfg))


def fc_layer(cfg, in_features: int, out_features: int) -> SpikingBlock:
    """Linear -> ``cfg.fc_norm`` -> neurons; the linear layer has a bias only without a norm
    (a BatchNorm's shift takes its place)."""
    if cfg.fc_norm not in FC_NORMS:
        raise ConfigError(f"model.fc_norm must be one of {FC_NORMS}, got {cfg.fc_norm!r}")
    norm = nn.BatchNorm1d(out_features) if cfg.fc_norm == "batchnorm" else nn.Identity()
    return SpikingBlock(nn.Linear(in_features, out_features, bias=cfg.fc_norm == "none"),
                        norm, neuron(cfg))


def plain_network(cfg, convs: tuple, fcs: tuple, num_classes: int, in_channels: int,
                  image_size, odd_pools: str = "refuse") -> SpikingNetwork:
    """A plain stack: ``convs`` (channel counts, or ``"P"`` for a 2x2 average pool), then
    ``fcs`` (hidden units, each with time-shared dropout), then the readout, every count
    scaled by ``cfg.width``. A pool of a map with an odd side is refused (``odd_pools=
    "refuse"``) or left out (``"skip"``). Weights are named ``convs.<i>.*``, ``fcs.<i>.*``
    and ``out.*``."""
    (height, width), channels, last = image_size, in_channels, "input"
    conv_blocks, pools, nodes = [], [], []
    for spec in convs:
        if spec == "P":
            if height % 2 or width % 2:
                if odd_pools == "skip":
                    continue
                raise ConfigError(f"image size {image_size[0]}x{image_size[1]} must be "
                                  f"divisible by {2 ** convs.count('P')}")
            pools.append(nn.AvgPool2d(2))
            height, width = height // 2, width // 2
            nodes.append(Node(f"pools.{len(pools) - 1}", "pool", (last,), pools[-1]))
        else:
            conv_blocks.append(conv_layer(cfg, channels, scaled(spec, cfg.width)))
            channels = scaled(spec, cfg.width)
            nodes.append(Node(f"convs.{len(conv_blocks) - 1}", "layer", (last,),
                              conv_blocks[-1]))
        last = nodes[-1].name
    nodes.append(Node("flatten", "flatten", (last,)))
    features, fc_blocks, dropouts, last = channels * height * width, [], [], "flatten"
    for hidden in fcs:
        fc_blocks.append(fc_layer(cfg, features, scaled(hidden, cfg.width)))
        dropouts.append(TimeSharedDropout(cfg.dropout))
        features, i = scaled(hidden, cfg.width), len(fc_blocks) - 1
        nodes += [Node(f"fcs.{i}", "layer", (last,), fc_blocks[i]),
                  Node(f"dropouts.{i}", "dropout", (f"fcs.{i}",), dropouts[i])]
        last = nodes[-1].name
    out = nn.Linear(features, num_classes)
    nodes.append(Node("out", "readout", (last,), out))
    modules = {"convs": nn.ModuleList(conv_blocks), "pools": nn.ModuleList(pools),
               "fcs": nn.ModuleList(fc_blocks), "dropouts": nn.ModuleList(dropouts), "out": out}
    return SpikingNetwork(modules, nodes, cfg.timesteps, cfg.readout_decay)
