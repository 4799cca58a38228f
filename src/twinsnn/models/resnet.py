"""Spiking ResNet-19 with SEW residual connections.

ResNet-19 is the residual net of the SNN literature on CIFAR (Zheng et al. 2021, tdBN; also
TET, Deng et al. 2022): a 128-channel 3 x 3 stem, three stages of 3, 3 and 2 basic blocks
of 128, 256 and 512 channels (the second and third start with stride 2), global pooling, a
256-unit hidden FC and the readout: 19 weight layers, every count scaled by ``width``. The
global pool sums the spike counts instead of averaging them (the BatchNorm after the FC
takes out the scale): a 7 x 7 average would put a factor 1/49, not a power of two, between
the spikes and the FC, and the folded, NIR and integer forms would no longer compute the
model's numbers exactly. Its blocks connect as in SEW-ResNet (Fang et al. 2021, "ADD"): each branch ends in
its own spiking neurons and the block's output is the sum of the two spike trains,

    out = SN(BN(conv2(SN(BN(conv1(x)))))) + shortcut(x),
    shortcut = x, or SN(BN(conv1x1 stride 2 (x))) where the block downsamples.

SEW over tdBN's membrane addition because every layer then reads spikes or sums of spikes:
a compressed layer's input stays an integer (the integer path and the per-layer BatchNorm
fold apply unchanged), and the addition is two converging edges in a NIR graph.
"""
from __future__ import annotations

from torch import nn

from ..layers import TimeSharedDropout
from ..structure import Node, SpikingNetwork
from .blocks import conv_layer, fc_layer, scaled

STEM = 128
STAGES = ((128, 3, 1), (256, 3, 2), (512, 2, 2))  # (channels, blocks, stride of the first)
HIDDEN = 256


def sew_resnet19(cfg, num_classes: int = 10, in_channels: int = 3,
                 image_size=(32, 32)) -> SpikingNetwork:
    """SEW ResNet-19 for ``cfg`` (a ``ModelConfig``) and data of that many classes, channels
    and size. Weights are named ``stem.*``, ``stages.<s>.<b>.{conv1,conv2,shortcut}.*``,
    ``fc.*`` and ``out.*``."""
    (height, width), channels = image_size, scaled(STEM, cfg.width)
    stem = conv_layer(cfg, in_channels, channels)
    nodes, last, stages = [Node("stem", "layer", ("input",), stem)], "stem", []
    for s, (planes, blocks, stride) in enumerate(STAGES):
        planes, stage = scaled(planes, cfg.width), nn.ModuleList()
        for b in range(blocks):
            step = stride if b == 0 else 1
            block, name = nn.ModuleDict(), f"stages.{s}.{b}"
            block["conv1"] = conv_layer(cfg, channels, planes, stride=step)
            block["conv2"] = conv_layer(cfg, planes, planes)
            nodes += [Node(f"{name}.conv1", "layer", (last,), block["conv1"]),
                      Node(f"{name}.conv2", "layer", (f"{name}.conv1",), block["conv2"])]
            shortcut = last
            if step != 1 or channels != planes:
                block["shortcut"] = conv_layer(cfg, channels, planes, kernel=1, stride=step)
                nodes.append(Node(f"{name}.shortcut", "layer", (last,), block["shortcut"]))
                shortcut = f"{name}.shortcut"
            nodes.append(Node(f"{name}.add", "add", (f"{name}.conv2", shortcut)))
            last, channels = f"{name}.add", planes
            stage.append(block)
            height, width = -(-height // step), -(-width // step)
        stages.append(stage)
    pool = nn.AvgPool2d((height, width), divisor_override=1)  # global sum pooling
    fc = fc_layer(cfg, channels, scaled(HIDDEN, cfg.width))
    dropout, out = TimeSharedDropout(cfg.dropout), nn.Linear(scaled(HIDDEN, cfg.width), num_classes)
    nodes += [Node("pool", "pool", (last,), pool), Node("flatten", "flatten", ("pool",)),
              Node("fc", "layer", ("flatten",), fc), Node("dropout", "dropout", ("fc",), dropout),
              Node("out", "readout", ("dropout",), out)]
    modules = {"stem": stem, "stages": nn.ModuleList(stages), "pool": pool, "fc": fc,
               "dropout": dropout, "out": out}
    return SpikingNetwork(modules, nodes, cfg.timesteps, cfg.readout_decay)
