"""The base network as a NIR graph (the ``nir`` package's interchange format) and back.

The graph follows the network's nodes (``structure``): each layer a synapse (``Conv2d``,
``Affine`` / ``Linear``) feeding a ``LIF``; pools as ``AvgPool2d`` (``SumPool2d`` before a
compressed layer), ``Flatten``; a residual addition as edges converging on the node that
reads the sum (NIR sums a node's inputs); the readout an ``Affine`` feeding an ``LI``:

    Conv2d -> LIF [-> AvgPool2d | SumPool2d] ... -> Flatten -> Linear -> LIF ... -> Affine -> LI

NIR's neurons are continuous-time, ``tau dv/dt = (v_leak - v) + r I``; one forward-Euler
step of length ``dt`` gives ``v[t] = (1 - dt/tau) v[t-1] + (dt/tau) (v_leak + r I[t])``.
With ``tau = dt / (1 - a)``, ``r = g / (1 - a)``, ``v_leak = h / (1 - a)`` that is eq. 1
driven by ``g I + h``: ``u[t] = a u[t-1] + (g I[t] + h)``, exactly. BatchNorm (eval
statistics) is folded (``fold.py``), by default into each neuron (``g = gain``,
``h = shift``) so the weights are the trained ones, codes in {-1, 0, +1} for a compressed
layer, and the graph reproduces the model bitwise; ``fold="weights"`` instead multiplies
full-precision weights by ``gain`` with bias ``shift`` (``g = 1``, ``h = 0``: the form
most importers accept), and gives a compressed layer the bias ``shift / gain`` and the
threshold ``theta / gain``. A pool before a compressed layer becomes a ``SumPool2d``.

NIR fires on ``v > v_threshold``, eq. 1 on ``u >= theta``: the graph stores the largest
float32 below each threshold, so that in float32 the two tests agree. The reset to
``v_reset = 0`` right after a spike is eq. 1's ``(1 - s[t-1])`` factor. What NIR has no
field for (the number of timesteps, the step ``dt``, the input normalization, that a static
image is presented at every step, and that the class is the argmax of the output potentials
summed over T) is stored as JSON in the graph's metadata under ``"twinsnn"``, the
normalization at its top level (``"normalization": {"mean": [...], "std": [...]}``).
"""
from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .files import atomic_write, first_line
from .fold import FoldedBlock, fold_layers
from .layers import SpikingBlock
from .neurons import eq1_neuron
from .structure import (INPUT, Node, SpikingNetwork, input_pools, layers, network, pool_area,
                        shapes)

DT = 1e-4  # s: the forward-Euler step the neuron parameters assume (snnTorch's NIR default)
FORMAT = "twinsnn-nir/1"
METADATA_KEY = "twinsnn"
DECODE = "logits = sum over the timesteps of the output node; class = argmax"
INPUT_NOTE = ("the image normalized per channel, (x - mean) / std with pixels in [0, 1] "
              "(normalization), presented at every timestep; or one frame per timestep")
MAX_TIMESTEPS = 10_000  # a graph asking for more is refused, not run
FOLDS = ("neurons", "weights")  # where BatchNorm goes: each neuron's r and v_leak, or the weights


def _below(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 below each value: ``v > result`` iff ``v >= threshold`` in float32."""
    return np.nextafter(threshold.astype(np.float32), np.float32(-np.inf))


def _readout(decay: float, size: int) -> nir.NIRNode:
    """The non-spiking output neuron ``u[t] = decay u[t-1] + I[t]``: ``LI`` at step ``DT``,
    or the integrator ``I`` for ``decay = 1``."""
    ones = np.ones(size)
    if decay == 1.0:
        return nir.I(r=ones)
    return nir.LI(tau=ones * (DT / (1.0 - decay)), r=ones / (1.0 - decay), v_leak=0 * ones)


def input_shape(meta: dict) -> tuple[int, ...]:
    """The per-sample shape ``(C, H, W)`` of a network's input, from its ``meta`` (``model``'s
    ``in_channels`` and ``image_size``, or those at its top level); ``ConfigError`` if absent."""
    spec = meta.get("model", meta) if isinstance(meta.get("model"), dict) else meta
    channels, size = spec.get("in_channels"), spec.get("image_size")
    if not (type(channels) is int and isinstance(size, (list, tuple)) and len(size) == 2):
        raise ConfigError("NIR export needs the input's shape: pass meta={'model': "
                          "{'in_channels': C, 'image_size': [H, W]}} (a built-in network "
                          "carries it)")
    return (channels, *size)


def lif_constants(node: Node) -> tuple[float, float]:
    """``(decay a, threshold theta)`` of a layer node's neurons, which must run eq. 1
    (``neurons.eq1_neuron``) with ``a`` in [0, 1) (NIR's LIF node has a finite time
    constant); ``ConfigError`` otherwise."""
    neuron = eq1_neuron(node.module.neuron, "NIR export", node.name)
    decay = float(neuron.decay)
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"NIR export needs model.decay in [0, 1) (a LIF node), got {decay}")
    return decay, float(neuron.threshold)


def _layer(module: nn.Module, f: FoldedBlock, decay: float, threshold: float, fold: str,
           in_shape, out_shape):
    """``(synapse node, LIF node)`` of one block with BatchNorm folded in (``fold`` module):
    ``fold="neurons"``: the weights as trained (codes for a compressed layer), ``gain`` and
    ``shift`` in each neuron's ``r`` and ``v_leak``; ``fold="weights"``: full-precision
    weights times ``gain`` with bias ``shift``, or codes with bias ``shift / gain`` and
    threshold ``theta / gain``; ``r = 1 / (1 - a)`` and ``v_leak = 0``."""
    theta = torch.full_like(f.gain, threshold)
    weight, bias, scale, leak = f.weight, torch.zeros_like(f.gain), f.gain, f.shift
    if fold == "weights":
        scale, leak = torch.ones_like(f.gain), torch.zeros_like(f.gain)
        if f.compressed:
            bias, theta = f.shift / f.gain, theta / f.gain
        else:
            weight, bias = f.weight * f.gain.view(-1, *[1] * (f.weight.dim() - 1)), f.shift
    per_neuron = lambda v: v.view(-1, *[1] * (len(out_shape) - 1)).expand(out_shape).numpy()
    neuron = nir.LIF(tau=per_neuron(torch.full_like(f.gain, DT / (1.0 - decay))),
                     r=per_neuron(scale / (1.0 - decay)), v_leak=per_neuron(leak / (1.0 - decay)),
                     v_threshold=_below(per_neuron(theta)), v_reset=per_neuron(0 * theta))
    weight, bias = weight.float().numpy(), bias.float().numpy()
    if isinstance(module, nn.Linear):
        synapse = nir.Affine(weight=weight, bias=bias) if bias.any() else nir.Linear(weight=weight)
    else:
        synapse = nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=weight,
                             stride=module.stride, padding=module.padding,
                             dilation=module.dilation, groups=module.groups, bias=bias)
    return synapse, neuron


def network_graph(net: SpikingNetwork, meta: dict, layer, pool, readout,
                  info: dict) -> nir.NIRGraph:
    """The NIR graph of ``net``'s nodes from ``input`` to ``output``, with ``info`` (and the
    input's normalization and the model's ``meta``) as JSON in its metadata. A layer becomes
    ``layer(node, in_shape, out_shape) -> (synapse, neuron)``, named ``<name>.synapse`` and
    ``<name>.lif``; a pool ``pool(node, kernel)``; the readout the chain ``readout(node) ->
    [(suffix, NIR node), ...]`` named ``<name>.<suffix>`` before the ``output``; an addition
    becomes edges converging on the nodes that read it (NIR sums a node's inputs); dropout is
    left out."""
    shape = input_shape(meta)
    sizes = shapes(net, shape)
    nodes, edges = {"input": nir.Input(input_type=np.array(shape))}, []
    ends = {INPUT: ["input"]}  # a node's output: the NIR nodes whose outputs sum to it

    def add(name, node, sources):
        nodes[name] = node
        edges.extend((source, name) for source in sources)

    for node in net.nodes:
        sources = [end for name in node.inputs for end in ends[name]]
        if node.kind in ("add", "dropout"):
            ends[node.name] = sources
            continue
        if node.kind == "layer":
            synapse, neuron = layer(node, sizes[node.inputs[0]], sizes[f"{node.name}.synapse"])
            add(f"{node.name}.synapse", synapse, sources)
            add(f"{node.name}.lif", neuron, [f"{node.name}.synapse"])
            ends[node.name] = [f"{node.name}.lif"]
        elif node.kind == "pool":
            pool_area(node.module)  # a non-overlapping, unpadded pool
            k = node.module.kernel_size
            add(node.name, pool(node, np.array(k if isinstance(k, tuple) else (k, k))), sources)
            ends[node.name] = [node.name]
        elif node.kind == "flatten":
            add(node.name, nir.Flatten(input_type=np.array(sizes[node.inputs[0]]),
                                       start_dim=0), sources)
            ends[node.name] = [node.name]
        else:
            for suffix, step in readout(node):
                add(f"{node.name}.{suffix}", step, sources)
                sources = [f"{node.name}.{suffix}"]
            add("output", nir.Output(output_type=np.array([node.module.out_features])), sources)
    data = meta.get("data", {})
    info = {**info, "input": INPUT_NOTE, "normalization": {
        "mean": data.get("mean"), "std": data.get("std")}, "meta": meta}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={METADATA_KEY: json.dumps(info)})


def save_graph(graph: nir.NIRGraph, path) -> Path:
    """``nir.write`` of ``graph`` to ``path``, atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: nir.write(tmp, graph))
    return path


def to_graph(model: nn.Module, meta: dict, fold: str = "neurons") -> nir.NIRGraph:
    """The NIR graph of a ``SpikingNetwork`` (eval mode, BatchNorm folded as ``fold`` says,
    see ``_layer``; ``network_graph``); ``meta``: how the model was built and fed
    (``model``, ``data``, ``config``), kept in the graph's metadata. The readout is
    ``<name>.synapse`` and ``<name>.li``."""
    if fold not in FOLDS:
        raise ConfigError(f"fold must be one of {FOLDS}, got {fold!r}")
    net = network(model, "NIR export").eval()
    folded = fold_layers(net)
    sum_pools = {p.name for node in layers(net) if folded[node.name].sums_pool
                 for p in input_pools(net, node)[1]}

    def layer(node, in_shape, out_shape):
        return _layer(node.module.synapse, folded[node.name], *lif_constants(node), fold,
                      in_shape, out_shape)

    def pool(node, k):
        summing = node.name in sum_pools or pool_area(node.module) == 1
        kind = nir.SumPool2d if summing else nir.AvgPool2d
        return kind(kernel_size=k, stride=k, padding=np.zeros(2, int))

    def readout(node):
        return [("synapse", nir.Affine(weight=node.module.weight.detach().float().numpy(),
                                       bias=node.module.bias.detach().float().numpy())),
                ("li", _readout(net.readout_decay, node.module.out_features))]

    info = {"format": FORMAT, "dt": DT, "timesteps": net.timesteps, "decode": DECODE,
            "fold": fold}
    return network_graph(net, meta, layer, pool, readout, info)


def write_graph(model: nn.Module, meta: dict, path, fold: str = "neurons") -> Path:
    """``to_graph(model, meta, fold)`` written to ``path``, atomically."""
    return save_graph(to_graph(model, meta, fold), path)


class GraphLIF(nn.Module):
    """NIR's LIF node at step ``dt``, per neuron, over ``[T, B, ...]``:
    ``v[t] = decay v[t-1] + (gain I[t] + leak)``, spike where ``v > threshold``, then
    ``v = v_reset``. ``gain I + leak`` is rounded once to float32 (as PyTorch's BatchNorm
    rounds ``k y + h``), so a graph folded into its neurons reproduces the model bitwise."""

    def __init__(self, decay, gain, leak, threshold, reset):
        super().__init__()
        self.register_buffer("decay", torch.as_tensor(decay, dtype=torch.float32))
        self.register_buffer("gain", torch.as_tensor(gain, dtype=torch.float64))
        self.register_buffer("leak", torch.as_tensor(leak, dtype=torch.float64))
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32))
        self.register_buffer("reset", torch.as_tensor(reset, dtype=torch.float32))

    def forward(self, current_tb: torch.Tensor) -> torch.Tensor:
        v, spikes = torch.zeros_like(current_tb[0]), []
        for current in current_tb:
            v = (self.gain * current.double() + self.leak).to(v.dtype) + self.decay * v
            s = v > self.threshold
            spikes.append(s.to(current.dtype))
            v = torch.where(s, self.reset, v)
        return torch.stack(spikes)


class NotTwinsnnShaped(Exception):
    """The graph is readable but not the shape ``to_graph`` writes; says why."""


def _order(graph: nir.NIRGraph) -> tuple[list[str], dict[str, list[str]]]:
    """The graph's node names from its one ``Input`` in an order where every node comes after
    its inputs, and each node's inputs; ``NotTwinsnnShaped`` for a cycle, a node not reached
    from the input, or other than one ``Input`` and one ``Output``."""
    inputs = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in inputs or dst not in inputs:
            raise NotTwinsnnShaped(f"an edge names a node it does not have ({src} -> {dst})")
        inputs[dst].append(src)
    for kind in (nir.Input, nir.Output):
        found = [k for k, n in graph.nodes.items() if isinstance(n, kind)]
        if len(found) != 1:
            raise NotTwinsnnShaped(f"it has {len(found)} {kind.__name__} nodes, not 1")
    order, placed = [], set()
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in placed and all(i in placed for i in inputs[n])
                 and (inputs[n] or isinstance(graph.nodes[n], nir.Input))]
        if not ready:
            raise NotTwinsnnShaped("it has a cycle or a node not reached from its Input")
        order += ready
        placed.update(ready)
    return order, inputs


def _array(node, field: str) -> np.ndarray:
    value = np.asarray(getattr(node, field))
    if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
        raise NotTwinsnnShaped(f"{type(node).__name__}.{field} is not a finite number array")
    return value.astype(np.float64)


def _neuron_params(node, dt: float) -> dict:
    """``GraphLIF`` arguments of a LIF node (forward Euler at ``dt``)."""
    tau = _array(node, "tau")
    if not (tau >= dt).all():
        raise NotTwinsnnShaped(f"a LIF time constant is below the step dt = {dt}")
    ratio = dt / tau
    return dict(decay=1.0 - ratio, gain=_array(node, "r") * ratio,
                leak=_array(node, "v_leak") * ratio, threshold=_array(node, "v_threshold"),
                reset=_array(node, "v_reset"))


def _readout_decay(node, dt: float) -> float:
    """The one decay of the readout LI/I node, which must have unit gain and no leak."""
    if isinstance(node, nir.I):
        decay, gain, leak = np.ones(1), _array(node, "r"), np.zeros(1)
    else:
        ratio = dt / _array(node, "tau")
        decay, gain, leak = 1.0 - ratio, _array(node, "r") * ratio, _array(node, "v_leak")
    if np.ptp(decay) != 0 or not np.allclose(gain, 1.0, rtol=0, atol=1e-12) or leak.any():
        raise NotTwinsnnShaped("its readout is not one leaky integrator with unit gain and no leak")
    return float(decay.flat[0])


def _tensor(value) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def _torch_synapse(node) -> nn.Module:
    """``nn.Conv2d`` / ``nn.Linear`` of a node; an all-zero bias is left out, so the layer
    runs the same kernel as the model it came from."""
    weight = _tensor(_array(node, "weight"))
    bias = _tensor(_array(node, "bias")) if hasattr(node, "bias") else None
    bias = bias if bias is not None and bias.any() else None
    if isinstance(node, nir.Conv2d):
        if isinstance(node.padding, str):
            raise NotTwinsnnShaped("a Conv2d has string padding; expected integers")
        module = nn.Conv2d(weight.shape[1] * int(node.groups), weight.shape[0],
                           tuple(weight.shape[2:]), stride=tuple(int(v) for v in node.stride),
                           padding=tuple(int(v) for v in node.padding),
                           dilation=tuple(int(v) for v in node.dilation),
                           groups=int(node.groups), bias=bias is not None)
    else:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    module.weight.data = weight
    if bias is not None:
        module.bias.data = bias
    return module


def _pool(node) -> nn.Module:
    k = tuple(int(v) for v in np.broadcast_to(node.kernel_size, 2))
    if tuple(int(v) for v in np.broadcast_to(node.stride, 2)) != k or np.any(node.padding):
        raise NotTwinsnnShaped("a pool is not non-overlapping and unpadded")
    return nn.AvgPool2d(k, divisor_override=1 if isinstance(node, nir.SumPool2d) else None)


SYNAPSES = (nir.Conv2d, nir.Affine, nir.Linear)


def _assemble(graph: nir.NIRGraph, info: dict, readout_decay: float | None = None
              ) -> SpikingNetwork:
    """The ``SpikingNetwork`` of a graph made of ``Input``, synapse-LIF pairs (a layer),
    ``AvgPool2d`` / ``SumPool2d``, ``Flatten``, and an ``Affine`` -> ``LI`` readout before the
    ``Output``, or with ``readout_decay`` given, the ``Affine`` alone (whose currents drive the
    readout the metadata describes); a node with several inputs reads their sum."""
    dt, order, inputs = float(info["dt"]), *_order(graph)
    readers = {name: [d for s, d in graph.edges if s == name] for name in graph.nodes}
    ours, nodes, blocks, pools, out, decay = {}, [], [], [], None, None
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            ours[name] = INPUT
            continue
        if name in ours:  # the LIF or LI of a pair, placed with its synapse
            continue
        sources = [ours[i] for i in inputs[name]]
        if isinstance(node, nir.Output):
            if out is None or sources != ["out"]:
                raise NotTwinsnnShaped("its Output does not read an Affine -> LI readout (or a "
                                       "portable graph's readout Affine)")
            continue
        if out is not None:
            raise NotTwinsnnShaped(f"node {name} comes after the readout")
        if len(sources) > 1:
            nodes.append(Node(f"{name}.sum", "add", tuple(sources)))
            sources = [f"{name}.sum"]
        if isinstance(node, SYNAPSES):
            after = readers[name]
            if len(after) != 1 or len(inputs[after[0]]) != 1:
                raise NotTwinsnnShaped(f"synapse {name} does not feed one neuron node alone")
            neuron = graph.nodes[after[0]]
            if isinstance(neuron, nir.LIF):
                blocks.append(SpikingBlock(_torch_synapse(node), nn.Identity(),
                                           GraphLIF(**_neuron_params(neuron, dt))))
                layer = name[:-len(".synapse")] if name.endswith(".synapse") else name
                nodes.append(Node(layer, "layer", tuple(sources), blocks[-1]))
                ours[name] = ours[after[0]] = layer
                continue
            if readout_decay is not None and isinstance(neuron, nir.Output) and \
                    isinstance(node, (nir.Affine, nir.Linear)):
                out, decay = _torch_synapse(node), readout_decay
                nodes.append(Node("out", "readout", tuple(sources), out))
                ours[name] = "out"
                continue
            if not isinstance(neuron, (nir.LI, nir.I)) or \
                    not isinstance(node, (nir.Affine, nir.Linear)):
                raise NotTwinsnnShaped(f"synapse {name} feeds a {type(neuron).__name__}; "
                                       "expected a LIF, or an LI readout after an Affine")
            out, decay = _torch_synapse(node), _readout_decay(neuron, dt)
            nodes.append(Node("out", "readout", tuple(sources), out))
            ours[name] = ours[after[0]] = "out"
            continue
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            pools.append(_pool(node))
            nodes.append(Node(name, "pool", tuple(sources), pools[-1]))
        elif isinstance(node, nir.Flatten):
            nodes.append(Node(name, "flatten", tuple(sources)))
        else:
            raise NotTwinsnnShaped(f"node {name} is a {type(node).__name__}, which twinsnn "
                                   "does not read here")
        ours[name] = name
    if out is None:
        raise NotTwinsnnShaped("it has no Affine -> LI readout before its Output")
    modules = {"layers": nn.ModuleList(blocks), "pools": nn.ModuleList(pools), "out": out}
    try:
        return SpikingNetwork(modules, nodes, int(info["timesteps"]), decay)
    except ValueError as e:
        raise NotTwinsnnShaped(str(e)) from None


def _info(graph: nir.NIRGraph, form: str) -> dict:
    """The twinsnn metadata of a graph of ``form``: format, dt, timesteps and the model's
    ``meta``."""
    raw = (graph.metadata or {}).get(METADATA_KEY)
    try:
        info = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise NotTwinsnnShaped(f"it has no '{METADATA_KEY}' metadata (timesteps, dt, data set); "
                      "write it with `twinsnn export --format nir`") from None
    if not isinstance(info, dict) or info.get("format") != form:
        found = info.get("format") if isinstance(info, dict) else None
        raise NotTwinsnnShaped(f"its metadata is {found!r:.60}, not {form}; export the "
                               "network again with `twinsnn export CHECKPOINT -o model.nir`")
    dt, steps = info.get("dt"), info.get("timesteps")
    if not (isinstance(dt, float) and dt > 0 and type(steps) is int
            and 0 < steps <= MAX_TIMESTEPS and isinstance(info.get("meta"), dict)):
        raise NotTwinsnnShaped(f"its metadata lacks a positive dt, timesteps (1 to "
                               f"{MAX_TIMESTEPS}) or the model's meta")
    return info


def graph_format(path) -> str | None:
    """The ``format`` a NIR file's twinsnn metadata names, or ``None`` for any other file."""
    try:
        graph = nir.read(Path(path))
        return json.loads(graph.metadata[METADATA_KEY]).get("format")
    except Exception:  # not a file of ours: its reader says what is wrong
        return None


def read_graph(path, form: str = FORMAT, readout=None) -> tuple[SpikingNetwork, dict]:
    """Build and check the network a NIR file of ``form`` describes: ``(model in eval mode,
    meta)``; ``CheckpointError`` (one line) for a missing, damaged or not twinsnn-shaped file.
    ``readout(info)``: the decay of a readout the graph's metadata describes (a graph that
    ends at the readout's synapse), or ``NotTwinsnnShaped``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such NIR file")
    try:
        graph = nir.read(path)
    except Exception as e:  # h5py and nir raise many types for a damaged file
        raise CheckpointError(f"{path}: not a readable NIR file ({first_line(e)})") from None
    try:
        if not isinstance(graph, nir.NIRGraph):
            raise NotTwinsnnShaped("it holds a single node, not a graph")
        info = _info(graph, form)
        model = _assemble(graph, info, None if readout is None else readout(info)).eval()
        (source,) = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
        shape = np.asarray(source.input_type["input"]).tolist()
        with torch.no_grad():
            model(torch.zeros(1, *shape))  # every shape fits
    except NotTwinsnnShaped as e:
        raise CheckpointError(f"{path}: not a twinsnn-shaped NIR graph: {e}") from None
    except Exception as e:  # any bad value in an untrusted graph
        raise CheckpointError(f"{path}: not a twinsnn-shaped NIR graph: its layers do not "
                              f"fit together ({first_line(e)})") from None
    return model, info["meta"]
