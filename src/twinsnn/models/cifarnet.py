"""Spiking CIFARNet (Wu et al. 2019), the network of the paper:

    128C3-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-Out

Every channel and hidden count is scaled by ``width``. Each conv is followed by BatchNorm
and a layer of spiking neurons (``neuron``, LIF: eq. 1, with the ``surrogate`` gradient);
each hidden FC by an optional normalization (``fc_norm``), spiking neurons and time-shared
dropout. The image enters the first conv at every timestep (direct encoding). The output
layer does not spike: its membrane potential integrates the input current
(``u[t] = r * u[t-1] + I[t]``, ``r = readout_decay``) and the logits are ``sum_t u[t]``.
"""
from __future__ import annotations

from ..structure import SpikingNetwork
from .blocks import plain_network

CONVS = (128, 256, "P", 512, "P", 1024, 512)  # "P": 2x2 average pool
FCS = (1024, 512)


def cifarnet(cfg, num_classes: int = 10, in_channels: int = 3,
             image_size=(32, 32)) -> SpikingNetwork:
    """The paper's spiking CIFARNet for ``cfg`` (a ``ModelConfig``) and data of that many
    classes, channels and size (divisible by 4, for the two pools). Weights are named
    ``convs.<i>.*``, ``fcs.<i>.*`` and ``out.*``."""
    return plain_network(cfg, CONVS, FCS, num_classes, in_channels, image_size)
