"""Measurements of a spiking network: firing rates per spiking layer."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .layers import SpikingBlock


@contextmanager
def firing_rates(model: nn.Module):
    """Within the block, record the mean spike rate of the neurons of every ``SpikingBlock``
    over all forwards.

    Yields a dict filled on exit: ``{block_name: spikes / (neurons * T * samples)}``.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for layer, block in model.named_modules():
        if isinstance(block, SpikingBlock):

            def hook(_m, _inp, spikes_tb, layer=layer):
                sums[layer] = sums.get(layer, 0) + spikes_tb.detach().float().sum()
                counts[layer] = counts.get(layer, 0) + spikes_tb.numel()

            handles.append(block.neuron.register_forward_hook(hook))
    rates: dict[str, float] = {}
    try:
        yield rates
    finally:
        for h in handles:
            h.remove()
        rates.update({k: float(sums[k]) / counts[k] for k in sums})
