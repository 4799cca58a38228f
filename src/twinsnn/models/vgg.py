"""Spiking VGG-11 (Simonyan & Zisserman 2015, configuration A) as SNN papers train it on
CIFAR and CIFAR10-DVS (e.g. Rathi & Roy 2021, Deng et al. 2022):

    64C3-AP2-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-AP2-4096FC-4096FC-Out

every count scaled by ``width``. Each conv is followed by BatchNorm and spiking neurons; the
pools average spikes (ANN VGG's max pooling has no counterpart that keeps a layer's input a
sum of spikes); each hidden FC has ``fc_norm``, neurons and time-shared dropout; the readout
integrates without spiking, as in CIFARNet. A pool is kept while both sides of the feature
map are even, so the same net takes Fashion-MNIST's 28 x 28 (two pools), CIFAR's 32 x 32
(five) and 48 x 48 event frames (four).
"""
from __future__ import annotations

from ..structure import SpikingNetwork
from .blocks import plain_network

CONVS = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
FCS = (4096, 4096)


def vgg11(cfg, num_classes: int = 10, in_channels: int = 3, image_size=(32, 32)) -> SpikingNetwork:
    """Spiking VGG-11 for ``cfg`` (a ``ModelConfig``) and data of that many classes, channels
    and size. Weights are named ``convs.<i>.*``, ``fcs.<i>.*`` and ``out.*``."""
    return plain_network(cfg, CONVS, FCS, num_classes, in_channels, image_size,
                         odd_pools="skip")
