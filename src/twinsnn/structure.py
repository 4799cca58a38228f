"""One description of a network, run as it is described: nodes over time-major tensors.

A ``SpikingNetwork`` is a list of ``Node``s in the order they run. Each reads the outputs of
earlier nodes, or ``"input"`` (the network's input), by name:

    layer    a ``layers.SpikingBlock``, synapse (Conv2d / Linear) -> norm -> neuron, over
             ``[T, B, ...]``: spikes out
    pool     a non-overlapping ``nn.AvgPool2d``: the mean over each window, or with
             ``divisor_override=1`` the sum
    dropout  a ``layers.TimeSharedDropout`` (the identity in evaluation)
    flatten  ``[T, B, ...] -> [T, B, features]``
    add      the sum of its inputs: a residual connection (spikes add up to counts)
    readout  an ``nn.Linear`` whose currents drive a non-spiking leaky integrator,
             ``u[t] = readout_decay * u[t-1] + I[t]``; the network's output ``[T, B, K]``,
             and the logits are its sum over T

The input is a static image ``[B, C, H, W]`` (direct encoding: presented at every one of the
T steps; a layer reading it computes its synapse and norm once) or frames ``[T, B, C, H, W]``.
Compression, BatchNorm folding, NIR export and reading, integer inference and the operation
report read a network through its nodes (``layers``, ``readout``, ``input_pools``, ``shapes``);
none of them knows an architecture, and a model file builds its network from these nodes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .layers import SpikingBlock, TimeSharedDropout, over_time
from .neurons import state_dtype

KINDS = {"layer": SpikingBlock, "pool": nn.AvgPool2d, "dropout": TimeSharedDropout,
         "flatten": None, "add": None, "readout": nn.Linear}
INPUT = "input"


@dataclass(frozen=True, eq=False)
class Node:
    """One step of a network: ``kind`` (a key of ``KINDS``) applied to the outputs of the
    nodes named in ``inputs`` (``"input"``: the network's input), with its ``module``."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    module: nn.Module | None = None


def _check(net: nn.Module, nodes: list[Node]) -> None:
    """``ValueError`` unless ``nodes`` form a graph ``SpikingNetwork`` can run."""
    known, registered = {INPUT}, {id(m) for m in net.modules()}
    for i, node in enumerate(nodes):
        if node.kind not in KINDS:
            raise ValueError(f"node {node.name!r}: kind must be one of {', '.join(KINDS)}")
        if node.name in known:
            raise ValueError(f"node name {node.name!r} is used twice")
        missing = [name for name in node.inputs if name not in known]
        if missing:
            raise ValueError(f"node {node.name!r} reads {missing[0]!r} before it is made")
        arity = len(node.inputs)
        if (node.kind == "add" and arity < 2) or (node.kind != "add" and arity != 1):
            raise ValueError(f"node {node.name!r} ({node.kind}) has {arity} inputs")
        kind = KINDS[node.kind]
        if kind is not None and not isinstance(node.module, kind):
            raise ValueError(f"node {node.name!r} ({node.kind}) needs a {kind.__name__}")
        if node.module is not None and id(node.module) not in registered:
            raise ValueError(f"node {node.name!r}: its module is not part of the network")
        if (node.kind == "readout") != (i == len(nodes) - 1):
            raise ValueError("a network has one readout, its last node")
        known.add(node.name)


class SpikingNetwork(nn.Module):
    """A network that runs its ``nodes`` (module docstring) in order: ``forward(x)`` gives the
    readout's potentials ``[T, B, K]``. ``modules`` are registered as its children under
    their keys (which name their weights in a state dict); every node's module is one of
    them or inside one. ``meta`` describes the network to the files it is written to:
    ``{"model": models.model_spec(...)}`` for a built-in one (``models.build_model``), with
    the ``"data"`` it was trained on and its ``"config"`` once trained or read from a file;
    empty for a network built by hand."""

    def __init__(self, modules: dict[str, nn.Module], nodes: list[Node], timesteps: int,
                 readout_decay: float):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        _check(self, nodes)
        self.nodes = list(nodes)
        self.timesteps, self.readout_decay = timesteps, readout_decay
        self.meta: dict = {}
        last_use = {name: i for i, node in enumerate(self.nodes) for name in node.inputs}
        self._free = [[n for n, last in last_use.items() if last == i]
                      for i in range(len(self.nodes))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output potentials ``[T, B, K]`` of a static ``[B, C, H, W]`` or framed
        ``[T, B, C, H, W]`` input."""
        if x.dim() not in (4, 5):
            raise ValueError(f"expected [B,C,H,W] or [T,B,C,H,W], got {tuple(x.shape)}")
        values = {INPUT: x}
        for node, free in zip(self.nodes, self._free):
            if node.kind == "layer" and node.inputs[0] == INPUT and x.dim() == 4:
                out = node.module.forward_static(x, self.timesteps)  # synapse and norm once
            else:
                out = self._run(node, [self._time_major(values[name]) for name in node.inputs])
            values[node.name] = out
            for name in free:
                del values[name]
        return out

    def _time_major(self, value: torch.Tensor) -> torch.Tensor:
        return value.expand(self.timesteps, *value.shape) if value.dim() == 4 else value

    def _run(self, node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        (x_tb, *_) = args
        if node.kind in ("layer", "dropout"):
            return node.module(x_tb)
        if node.kind == "pool":
            return over_time(node.module, x_tb)
        if node.kind == "flatten":
            return x_tb.flatten(2)
        if node.kind == "add":
            return functools.reduce(torch.add, args)
        current_tb = over_time(node.module, x_tb)  # readout: [T, B, K]
        current_tb = current_tb.to(state_dtype(current_tb.dtype))  # float32 under autocast
        if self.readout_decay == 0.0:
            return current_tb
        u, potentials = torch.zeros_like(current_tb[0]), []
        for current in current_tb:
            u = self.readout_decay * u + current
            potentials.append(u)
        return torch.stack(potentials)


def network(model: nn.Module, needed_for: str) -> SpikingNetwork:
    """``model`` if it is a ``SpikingNetwork``, else a ``ConfigError`` saying that
    ``needed_for`` reads a network's structure."""
    if not isinstance(model, SpikingNetwork):
        raise ConfigError(f"{needed_for} reads a network's structure, which a "
                          f"{type(model).__name__} does not describe: build the network from "
                          "twinsnn.structure nodes (as the models in twinsnn.models are)")
    return model


def layers(net: SpikingNetwork) -> list[Node]:
    """The ``layer`` nodes, in order."""
    return [node for node in net.nodes if node.kind == "layer"]


def readout(net: SpikingNetwork) -> Node:
    return net.nodes[-1]


def by_name(net: SpikingNetwork) -> dict[str, Node]:
    return {node.name: node for node in net.nodes}


def pool_area(pool: nn.Module) -> int:
    """The count a non-overlapping, unpadded ``nn.AvgPool2d`` divides its window's sum by:
    the window's area, or 1 for a sum pool (``divisor_override=1``); ``ValueError`` for any
    other pool."""
    k = pool.kernel_size
    k = (k, k) if isinstance(k, int) else tuple(k)
    stride = pool.stride if pool.stride is not None else k
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if not isinstance(pool, nn.AvgPool2d) or stride != k or pool.padding not in (0, (0, 0)) \
            or pool.divisor_override not in (None, 1):
        raise ValueError(f"{pool} is not a non-overlapping, unpadded average or sum pool")
    return 1 if pool.divisor_override == 1 else k[0] * k[1]


def input_pools(net: SpikingNetwork, node: Node) -> tuple[int, list[Node], bool]:
    """How ``node``'s input was made from the outputs of layers (or the network's input):
    ``(area, pools, analog)``. ``area``: the inputs per value that average pools averaged
    (1 when none did), the same along every path through ``add``s (``ValueError``
    otherwise); ``pools``: those averaging pool nodes; ``analog``: whether it comes from the network's
    input rather than spikes."""
    nodes = by_name(net)

    def walk(name: str) -> tuple[int, list[Node], bool]:
        if name == INPUT:
            return 1, [], True
        source = nodes[name]
        if source.kind in ("layer", "readout"):
            return 1, [], False
        if source.kind == "pool":
            area, pools, analog = walk(source.inputs[0])
            divisor = pool_area(source.module)
            return area * divisor, pools + [source] * (divisor > 1), analog
        if source.kind in ("flatten", "dropout"):
            return walk(source.inputs[0])
        paths = [walk(i) for i in source.inputs]  # add
        if len({area for area, _, _ in paths}) != 1:
            raise ValueError(f"{source.name} adds inputs pooled over different areas")
        return (paths[0][0], [p for _, pools, _ in paths for p in pools],
                any(analog for _, _, analog in paths))

    return walk(node.inputs[0])


def consumers(net: SpikingNetwork, name: str) -> list[Node]:
    """The layers and readout that read ``name``'s output, through pools, flattens, dropout
    and adds."""
    found = []
    for node in net.nodes:
        if name in node.inputs:
            found += [node] if node.kind in ("layer", "readout") else consumers(net, node.name)
    return found


@torch.no_grad()
def shapes(net: SpikingNetwork, input_shape) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every node's output (and ``"input"``'s) for an input of per-sample
    ``input_shape`` (``[C, H, W]``); a layer's synapse output is ``"<name>.synapse"``."""
    values = {INPUT: torch.zeros(1, *input_shape)}
    for node in net.nodes:
        x = values[node.inputs[0]]
        if node.kind in ("layer", "readout"):
            synapse = node.module.synapse if node.kind == "layer" else node.module
            if isinstance(synapse, nn.Linear) and x.dim() > 2:
                raise ValueError(f"{node.name}: a linear synapse reads an unflattened input")
            x = synapse(x)
            values[f"{node.name}.synapse"] = x
        elif node.kind == "pool":
            x = node.module(x)
        elif node.kind == "flatten":
            x = x.flatten(1)
        values[node.name] = x
    return {name: tuple(v.shape[1:]) for name, v in values.items()}
