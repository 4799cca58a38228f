"""Compression that cannot silently break a network of one's own: the scale each compressed
layer gets, and a warning when validation accuracy falls at the compression switch.

Ternary codes in {-1, 0, +1} carry no scale (eq. 6). Where a normalization follows the layer
(the paper's conv -> BatchNorm), it undoes any scale and codes alone are right; where none
follows, the layer's outputs jump by about 1 / mean|W| at the switch and the network forgets
what it learned. ``quant.scale=auto`` (the default) gives each compressed layer the scale
``none`` where a normalization follows it and ``layer`` (the mean |W| of its kept weights)
where none does.

What follows a layer is read from the network's description for a ``SpikingNetwork`` (a
layer node's block norm), and for any other ``nn.Module`` from the order its modules run in
one forward pass of a sample batch (forward hooks, on a copy, in evaluation mode, with the
random state restored): a layer counts as normalized when the next module that runs after
it, skipping modules that only rescale along (ReLU, pooling, dropout, flatten, identity), is
a normalization (``NORMS``), every time it runs. What hooks cannot see: functions called in
``forward`` (``F.layer_norm``, ``F.gelu``) and which branch a module belongs to (a norm on a
parallel branch that runs right after the layer would count). A layer wrongly thought
unnormalized only gets a scale its norm then removes.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .errors import TwinsnnError
from .layers import TimeSharedDropout
from .quant import SYNAPSES, weight_sparsity
from .structure import SpikingNetwork, layers as layer_nodes

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
# positively homogeneous: f(s x) = s f(x) for s > 0, so a norm after them still undoes a scale
ALONG = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
         nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Dropout,
         nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, TimeSharedDropout, nn.Flatten,
         nn.Unflatten, nn.Identity)
SWITCH_DROP = 0.05  # a fall of validation accuracy at the switch worth a warning (5 points)


def _described(net: SpikingNetwork, names: list[str]) -> dict[str, bool]:
    """From the description: a layer node's synapse is normalized when its block's norm is."""
    name_of = {id(m): n for n, m in net.named_modules()}
    normed = {name_of[id(node.module.synapse)]: isinstance(node.module.norm, NORMS)
              for node in layer_nodes(net)}
    return {n: normed.get(n, False) for n in names}


@torch.no_grad()
def _observed(model: nn.Module, names: list[str], x: torch.Tensor,
              reset: Callable[[nn.Module], None]) -> dict[str, bool]:
    """From the order the modules of a copy of ``model`` run in on the batch ``x``."""
    probe = copy.deepcopy(model).eval()
    order, handles = [], []
    for name, module in probe.named_modules():
        if "parametrizations" in name.split("."):
            continue
        if isinstance(module, SYNAPSES + NORMS) or not any(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: order.append((name, m))))
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices):
            reset(probe)
            probe(x)
    finally:
        for handle in handles:
            handle.remove()
    normed = {n: None for n in names}
    for i, (name, _) in enumerate(order):
        if name not in normed:
            continue
        after = next((m for _, m in order[i + 1:] if not isinstance(m, ALONG)), None)
        normed[name] = (normed[name] is not False) and isinstance(after, NORMS)
    return {n: bool(v) for n, v in normed.items()}


def normalized(model: nn.Module, names: list[str], x: torch.Tensor | None = None,
               reset: Callable[[nn.Module], None] = lambda m: None) -> dict[str, bool]:
    """``{layer: whether a normalization follows it}`` for the layers ``names`` of
    ``model`` (module docstring); ``x``: a sample batch, for a network that is not a
    ``SpikingNetwork``; ``reset`` clears a network's state before it runs."""
    if isinstance(model, SpikingNetwork):
        return _described(model, names)
    if x is None:
        raise TwinsnnError("which layers a normalization follows in a network that is not a "
                           "SpikingNetwork is seen on a sample batch: pass one (example=)")
    return _observed(model, names, x, reset)


def scales(scale: str, followed: dict[str, bool]) -> dict[str, str]:
    """``{layer: scale}``: ``quant.scale`` itself for every layer, or for ``auto`` ``none``
    where a normalization follows (``followed``) and ``layer`` where none does."""
    if scale != "auto":
        return {name: scale for name in followed}
    return {name: "none" if normed else "layer" for name, normed in followed.items()}


def _named(layers: list[str]) -> tuple[str, str]:
    """``("layer a", "its")`` or ``("layers a, b", "their")``."""
    many = len(layers) > 1
    return f"layer{'s' if many else ''} {', '.join(layers)}", "their" if many else "its"


def chosen_scales_line(chosen: dict[str, str], followed: dict[str, bool]) -> str | None:
    """The line that says which layers ``auto`` gave a scale (None if it gave none)."""
    scaled = [n for n, s in chosen.items() if s != "none" and not followed[n]]
    if not scaled:
        return None
    named, its = _named(scaled)
    return (f"quant.scale=auto: no normalization follows {named}, so {its} compressed "
            "weights get a scale (the mean |W| of the kept weights); layers that a "
            "normalization follows keep codes alone")


def switch_warning(before: float, after: float, base: nn.Module, chosen: dict[str, str],
                   followed: dict[str, bool]) -> str | None:
    """A warning when the base's validation accuracy fell by more than ``SWITCH_DROP`` from
    ``before`` (the last epoch in full precision) to ``after`` (the first compressed one),
    naming the likely cause; None otherwise."""
    if before - after <= SWITCH_DROP:
        return None
    fall = f"validation accuracy fell from {before:.1%} to {after:.1%} when compression started"
    bare = [n for n, s in chosen.items() if s == "none" and not followed[n]]
    if bare:
        named, its = _named(bare)
        return (f"{fall}: no normalization follows {named}, and {its} ternary codes carry no "
                f"scale (quant.scale=none), so {its} outputs changed size; set quant.scale "
                "to auto (the default) or layer")
    zeros = weight_sparsity(base)
    mostly = {n: z for n, z in zeros.items() if z > 0.9}
    if mostly:
        return (f"{fall}: the ternary threshold zeroes over 90% of the weights of "
                f"{_named(list(mostly))[0]}; lower quant.delta or use "
                "quant.delta_rule=mean_abs")
    return (f"{fall}: the compressed network has not recovered; a lower learning rate at the "
            "switch (quant.lr_at_switch) or more epochs after it may help")
