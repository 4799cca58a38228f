"""The base network as a NIR graph (the ``nir`` package's interchange format) and back.

Written graph, a chain from ``input`` to ``output``:

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
summed over T) is stored as JSON in the graph's metadata under ``"twinsnn"``.
"""
from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write, first_line
from .errors import CheckpointError, ConfigError
from .fold import FoldedBlock, fold_blocks, pool_area
from .layers import SpikingBlock
from .models import SpikingCNN

DT = 1e-4  # s: the forward-Euler step the neuron parameters assume (snnTorch's NIR default)
FORMAT = "twinsnn-nir/1"
METADATA_KEY = "twinsnn"
DECODE = "logits = sum over the timesteps of the output node; class = argmax"
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


def _layer(module: nn.Module, f: FoldedBlock, lif, fold: str, in_shape, out_shape):
    """``(synapse node, LIF node)`` of one block with BatchNorm folded in (``fold`` module):
    ``fold="neurons"``: the weights as trained (codes for a compressed layer), ``gain`` and
    ``shift`` in each neuron's ``r`` and ``v_leak``; ``fold="weights"``: full-precision
    weights times ``gain`` with bias ``shift``, or codes with bias ``shift / gain`` and
    threshold ``theta / gain``; ``r = 1 / (1 - a)`` and ``v_leak = 0``."""
    decay = float(lif.decay)
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"NIR export needs model.decay in [0, 1) (a LIF node), got {decay}")
    theta = torch.full_like(f.gain, float(lif.threshold))
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


def to_graph(model: SpikingCNN, meta: dict, fold: str = "neurons") -> nir.NIRGraph:
    """The NIR graph of ``model`` (eval mode, BatchNorm folded as ``fold`` says, see
    ``_layer``); ``meta``: how the model was built and fed (``model``, ``data``, ``config``),
    kept in the graph's metadata."""
    if fold not in FOLDS:
        raise ConfigError(f"fold must be one of {FOLDS}, got {fold!r}")
    model = model.eval()
    blocks = list(model.convs) + list(model.fcs)
    folded = fold_blocks(model)
    spec = meta.get("model", meta)
    shape = (spec["in_channels"], *spec["image_size"])  # per-sample shape flowing along
    nodes, order = {"input": nir.Input(input_type=np.array(shape))}, ["input"]

    def add(name, node):
        nodes[name] = node
        order.append(name)

    def flatten(x):
        if x.dim() > 2:
            add("flatten", nir.Flatten(input_type=np.array(x.shape[1:]), start_dim=0))
        return x.flatten(1)

    with torch.no_grad():
        x = torch.zeros(1, *shape)
        for i, (name, block, f) in enumerate(zip(_block_names(model), blocks, folded)):
            if isinstance(block.synapse, nn.Linear):
                x = flatten(x)
            y = block.synapse(x)
            synapse, neuron = _layer(block.synapse, f, block.neuron, fold, tuple(x.shape[1:]),
                                     tuple(y.shape[1:]))
            add(f"{name}.synapse", synapse)
            add(f"{name}.lif", neuron)
            x = block.pool(y)
            if pool_area(block.pool) > 1:
                k = np.array(block.pool.kernel_size if isinstance(block.pool.kernel_size, tuple)
                             else (block.pool.kernel_size,) * 2)
                sums = i + 1 < len(folded) and folded[i + 1].sums_pool
                pool = nir.SumPool2d if sums else nir.AvgPool2d
                add(f"{name}.pool", pool(kernel_size=k, stride=k, padding=np.zeros(2, int)))
        flatten(x)
        add("out", nir.Affine(weight=model.out.weight.detach().float().numpy(),
                              bias=model.out.bias.detach().float().numpy()))
        add("readout", _readout(model.readout_decay, model.out.out_features))
    nodes["output"] = nir.Output(output_type=np.array([model.out.out_features]))
    order.append("output")
    info = {"format": FORMAT, "dt": DT, "timesteps": model.timesteps, "decode": DECODE,
            "fold": fold, "input": "the normalized image (x - mean) / std at every timestep, "
                                   "or one frame per timestep", "meta": meta}
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:])),
                        metadata={METADATA_KEY: json.dumps(info)})


def _block_names(model: SpikingCNN) -> list[str]:
    return [f"convs.{i}" for i in range(len(model.convs))] + \
           [f"fcs.{i}" for i in range(len(model.fcs))]


def write_graph(model: SpikingCNN, meta: dict, path, fold: str = "neurons") -> Path:
    """``nir.write`` of ``to_graph(model, meta, fold)`` to ``path``, atomically."""
    path = Path(path)
    graph = to_graph(model, meta, fold)
    atomic_write(path, lambda tmp: nir.write(tmp, graph))
    return path


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


class GraphNetwork(SpikingCNN):
    """A ``SpikingCNN`` assembled from a graph's nodes: no BatchNorm, NIR's neurons."""

    def __init__(self, convs, fcs, out: nn.Linear, timesteps: int, readout_decay: float):
        nn.Module.__init__(self)
        self.convs, self.fcs, self.out = nn.ModuleList(convs), nn.ModuleList(fcs), out
        self.timesteps, self.readout_decay = timesteps, readout_decay


class NotTwinsnnShaped(Exception):
    """The graph is readable but not the shape ``to_graph`` writes; says why."""


def _chain(graph: nir.NIRGraph) -> list[tuple[str, nir.NIRNode]]:
    """The graph's nodes from its one ``Input`` to its one ``Output`` along single edges."""
    successor, has_pred = {}, set()
    for src, dst in graph.edges:
        if src in successor or dst in has_pred:
            raise NotTwinsnnShaped("it branches (a node with two inputs or two outputs)")
        successor[src] = dst
        has_pred.add(dst)
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise NotTwinsnnShaped(f"it has {len(inputs)} Input nodes, not 1")
    chain, name = [], inputs[0]
    while name is not None and len(chain) <= len(graph.nodes):
        chain.append((name, graph.nodes[name]))
        name = successor.get(name)
    if len(chain) != len(graph.nodes) or not isinstance(chain[-1][1], nir.Output):
        raise NotTwinsnnShaped("it is not one chain of nodes from its Input to an Output")
    return chain


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


def _assemble(chain, info: dict) -> GraphNetwork:
    """Parse the chain ``Input, (Conv2d, LIF[, pool])+, Flatten, (Affine, LIF)*, Affine, LI,
    Output`` into a ``GraphNetwork``."""
    dt, nodes = float(info["dt"]), [n for _, n in chain[1:-1]]
    synapses, neurons = (nir.Conv2d, nir.Affine, nir.Linear), nir.LIF
    convs, fcs, i = [], [], 0
    while i + 1 < len(nodes) and isinstance(nodes[i], synapses) and \
            isinstance(nodes[i + 1], neurons):
        block = SpikingBlock(_torch_synapse(nodes[i]), nn.Identity(),
                             GraphLIF(**_neuron_params(nodes[i + 1], dt)))
        i += 2
        if i < len(nodes) and isinstance(nodes[i], (nir.AvgPool2d, nir.SumPool2d)):
            block.pool = _pool(nodes[i])
            i += 1
        if isinstance(block.synapse, nn.Conv2d):
            if fcs:
                raise NotTwinsnnShaped("a Conv2d follows a fully connected layer")
            convs.append(block)
        else:
            fcs.append(block)
        if i < len(nodes) and isinstance(nodes[i], nir.Flatten) and convs and not fcs:
            i += 1
    rest = nodes[i:]
    if not convs or len(rest) != 2 or not isinstance(rest[0], (nir.Affine, nir.Linear)) \
            or not isinstance(rest[1], (nir.LI, nir.I)):
        found = ", ".join(type(n).__name__ for n in nodes)
        raise NotTwinsnnShaped(f"expected Conv2d-LIF blocks, then Affine-LIF blocks, then Affine and "
                      f"an LI readout; found {found[:300]}")
    return GraphNetwork(convs, fcs, _torch_synapse(rest[0]), int(info["timesteps"]),
                        _readout_decay(rest[1], dt))


def _info(graph: nir.NIRGraph) -> dict:
    """The twinsnn metadata of a graph: format, dt, timesteps and the model's ``meta``."""
    raw = (graph.metadata or {}).get(METADATA_KEY)
    try:
        info = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise NotTwinsnnShaped(f"it has no '{METADATA_KEY}' metadata (timesteps, dt, data set); "
                      "write it with `twinsnn export --format nir`") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise NotTwinsnnShaped(f"its metadata is not {FORMAT}")
    dt, steps = info.get("dt"), info.get("timesteps")
    if not (isinstance(dt, float) and dt > 0 and type(steps) is int
            and 0 < steps <= MAX_TIMESTEPS and isinstance(info.get("meta"), dict)):
        raise NotTwinsnnShaped(f"its metadata lacks a positive dt, timesteps (1 to "
                               f"{MAX_TIMESTEPS}) or the model's meta")
    return info


def read_graph(path) -> tuple[GraphNetwork, dict]:
    """Build and check the network a NIR file describes: ``(model in eval mode, meta)``;
    ``CheckpointError`` (one line) for a missing, damaged or not twinsnn-shaped file."""
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
        info, chain = _info(graph), _chain(graph)
        model = _assemble(chain, info).eval()
        shape = np.asarray(chain[0][1].input_type["input"]).tolist()
        with torch.no_grad():
            model(torch.zeros(1, *shape))  # every shape fits
    except NotTwinsnnShaped as e:
        raise CheckpointError(f"{path}: not a twinsnn-shaped NIR graph: {e}") from None
    except Exception as e:  # any bad value in an untrusted graph
        raise CheckpointError(f"{path}: not a twinsnn-shaped NIR graph: its layers do not "
                              f"fit together ({first_line(e)})") from None
    return model, info["meta"]
