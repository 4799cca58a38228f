"""BatchNorm folded out of a trained spiking network (eval statistics), layer by layer.

A layer (``structure``'s ``layer`` node) computes, per output channel ``c``, the input
current of its neurons

    I_c = k_c * (W x)_c + h_c,      k = gamma / sqrt(var + eps),  h = beta - mean * k

(``k``, ``h`` in float32 exactly as PyTorch's eval BatchNorm forms them; with no BatchNorm,
``k = 1`` and ``h`` is the layer's own bias). ``fold_layer`` writes this as

    I_c = gain_c * (V z)_c + shift_c

* full precision: ``V = W``, ``z = x``;
* compressed (``W = codes * scale_c``, codes in {-1, 0, +1}): ``V`` holds the codes with
  the signs of channel ``c`` flipped where ``k_c * scale_c < 0``, so ``gain > 0`` and the
  codes stay in {-1, 0, +1}; ``z`` is the *sum* (not the mean) of the pooled spikes when
  average pools precede the layer (``structure.input_pools``), their ``1 / area`` moved into
  ``gain``. With spikes (and sums of them, where residual connections add) ``V z`` is then
  an integer. A channel with ``gain = 0`` gets zero codes and ``gain = 1``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .structure import SpikingNetwork, input_pools, layers


class FoldedBlock(NamedTuple):
    weight: torch.Tensor  # float64 V: full-precision weight, or signed codes (compressed)
    gain: torch.Tensor  # float64 [C], > 0 for a compressed block
    shift: torch.Tensor  # float64 [C]
    compressed: bool
    sums_pool: bool  # z is the sum over the preceding pools' windows, not their mean


def codes_and_scale(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(codes int8, scale float64 [out])`` with ``weight == codes * scale[out]``, codes in
    {-1, 0, +1} and ``scale >= 0``, or ``None`` when ``weight`` is not of that form."""
    w = weight.detach().cpu().double()
    scale = w.abs().flatten(1).amax(1)
    codes = torch.sign(w)
    if not torch.equal(codes * scale.view(-1, *[1] * (w.dim() - 1)), w):
        return None
    return codes.to(torch.int8), scale


def batchnorm_affine(norm: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, h)`` float32 ``[C]`` with ``norm(y) = k * y + h`` (rounded once) per channel in
    eval mode, the factors PyTorch's CPU kernel applies: ``k = rsqrt(var + eps) * gamma``
    with ``torch.rsqrt`` (``1 / sqrt`` differs from it by an ulp in about a third of the
    channels) and ``h = beta - mean * k`` rounded once. Identity: ``k = 1, h = 0``."""
    if isinstance(norm, nn.Identity):
        return torch.ones(channels), torch.zeros(channels)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.track_running_stats:
        raise ValueError(f"cannot fold {type(norm).__name__}: only BatchNorm with running "
                         "statistics or no normalization")
    var, mean = norm.running_var.detach().float().cpu(), norm.running_mean.detach().float().cpu()
    gamma = norm.weight.detach().float().cpu() if norm.affine else torch.ones(channels)
    beta = norm.bias.detach().float().cpu() if norm.affine else torch.zeros(channels)
    k = torch.rsqrt(var + norm.eps) * gamma
    h = (beta.double() - mean.double() * k.double()).float()
    return k, h


def fold_layer(block: nn.Module, pooled_by: int = 1, compress: bool = True) -> FoldedBlock:
    """Fold a ``SpikingBlock``'s normalization (and its synapse's bias) into ``gain`` and
    ``shift``.

    ``pooled_by``: the area the average pools before it averaged over. ``compress``: keep the
    codes of a ternary/binary synapse (else its weight is treated as full precision)."""
    synapse = block.synapse
    channels = synapse.weight.shape[0]
    k, h = batchnorm_affine(block.norm, channels)
    k, h = k.double(), h.double()
    if synapse.bias is not None:
        h = h + k * synapse.bias.detach().cpu().double()
    factored = codes_and_scale(synapse.weight) if compress else None
    if factored is None:
        return FoldedBlock(synapse.weight.detach().cpu().double(), k, h, False, False)
    codes, scale = factored
    gain = k * scale / pooled_by  # exact for float32 factors and a power-of-two area
    sign = torch.where(gain < 0, -1, 1).to(torch.int8)
    codes = codes * sign.view(-1, *[1] * (codes.dim() - 1))
    codes[gain == 0] = 0
    gain = torch.where(gain == 0, 1.0, gain.abs())
    return FoldedBlock(codes.double(), gain, h, True, pooled_by > 1)


def fold_layers(net: SpikingNetwork) -> dict[str, FoldedBlock]:
    """``fold_layer`` of every layer of a network, by node name; a layer that reads the
    network's (analog) input is always folded as full precision."""
    folded = {}
    for node in layers(net):
        area, _, analog = input_pools(net, node)
        folded[node.name] = fold_layer(node.module, area, compress=not analog)
    return folded
