"""The portable NIR graph: a network in the one form that SpikingJelly, snnTorch and Norse all
import and run (``docs/deploy.md``), and that twinsnn reads back.

Every layer is a synapse (``Conv2d``, ``Linear`` or ``Affine``) feeding a ``LIF`` node whose
neurons all have

    r = 1,   v_leak = 0,   v_reset = 0,   v_threshold = 1,   tau = dt / (1 - a)

(snnTorch takes no leak potential and one threshold per layer, SpikingJelly one value of each
parameter per layer, Norse ignores ``r``), so that a forward-Euler step of ``dt`` is
``v[t] = a v[t-1] + (1 - a) I[t]``, a spike where ``v > 1``, then ``v = 0``. Eq. 1 of a layer
with its BatchNorm folded (``fold.py``: ``u[t] = a u[t-1] + g_c (V z)_c + h_c``, a spike where
``u >= theta``) is this step for ``v = u / theta'_c`` when channel ``c`` has

    weight_c = V_c * g_c / (theta'_c (1 - a)),     bias_c = h_c / (theta'_c (1 - a))

* a full-precision layer: ``V = W``, ``g`` the BatchNorm gain over the area of the average
  pools before it, ``theta' = theta``;
* a compressed layer (its input spikes, or sums of them): ``V`` the codes in {-1, 0, +1}
  ({-1, +1} binary), so its weights are codes times one factor per channel, which the
  metadata lists; ``theta'_c`` lies halfway between the highest potential that stays below
  ``theta`` and the lowest that reaches it (``lattice_threshold``), so no potential the layer
  can reach is nearer the threshold than the ``margin`` the metadata gives: ``>`` against
  ``>=`` and the rounding of a consumer's arithmetic cannot change a spike.

Pools are ``SumPool2d`` (Norse runs no ``AvgPool2d``), the ``1 / k^2`` folded into what reads
them; ``Flatten`` is over the per-sample shape (``start_dim=0``, as NIR defines it); a
residual addition is edges converging on the node that reads the sum. The graph ends at the
readout's synapse: the ``Output`` is its currents ``I[t]``. No consumer runs a non-spiking
readout (``LI``), so what the model does with them, ``u[t] = a_out u[t-1] + I[t]`` and logits
``= sum_t u[t] = sum_t c_t I[t]`` with ``c_t = (1 - a_out^(T - t)) / (1 - a_out)``, is in the
metadata (``"twinsnn"``, JSON), with ``dt``, the timesteps, the input's normalization and
presentation, and the run's ``meta``.
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from .fold import FoldedBlock, fold_layers
from .integer import LIMIT, thresholds
from .nir import DT, NotTwinsnnShaped, lif_constants, network_graph, read_graph, save_graph
from .structure import SpikingNetwork, input_pools, network

FORMAT = "twinsnn-nir-portable/1"
NEURONS = ("every LIF node: r = 1, v_leak = 0, v_reset = 0, v_threshold = 1, tau = dt / (1 - a); "
           "v[t] = a v[t-1] + (1 - a) I[t], a spike where v > 1, then v = 0")
DECODE = "logits = sum over t of weights[t] * output[t] (the readout); class = argmax"


def lattice_threshold(f: FoldedBlock, theta: float, decay: float, timesteps: int):
    """``(theta', margin)``, float64 ``[C]``, of a compressed layer: per channel, the threshold
    halfway between the highest potential below ``theta`` and the lowest at or above it that
    the layer can reach ``n = 0 .. T-1`` steps after a reset, and its distance to either; or
    ``None`` where its potentials lie on no lattice (``decay`` neither 0 nor ``2^-k``).

    With spikes in, ``S = V z`` is an integer and after ``n`` steps ``u = (g A + h sum_{i<=n}
    2^(ki)) / 2^(kn)`` for an integer ``A`` (``integer.py``), which fires iff ``A >= K[n]``:
    the potentials of ``A = K[n] - 1`` and ``A = K[n]`` bound the threshold at step ``n``. A
    channel whose ``K`` is beyond ``integer.LIMIT`` keeps ``theta`` (and margin 0)."""
    if decay == 0.0:
        shift, steps = 0, 1
    else:
        shift = -math.log2(decay)
        if shift != int(shift):
            return None
        shift, steps = int(shift), timesteps
    table = thresholds(f, theta, shift, steps)  # [steps, C]
    middle, margin = [], []
    for c, (g, h) in enumerate(zip(f.gain.tolist(), f.shift.tolist())):
        g, h, bounds = Fraction(g), Fraction(h), []
        for n in range(steps):
            k, total = int(table[n, c]), sum(1 << (shift * i) for i in range(n + 1))
            bounds.append(((g * (k - 1) + h * total) / (1 << (shift * n)),
                           (g * k + h * total) / (1 << (shift * n)), abs(k) >= LIMIT))
        low, high = max(b[0] for b in bounds), min(b[1] for b in bounds)
        if any(b[2] for b in bounds) or not low < theta <= high:
            middle.append(theta), margin.append(0.0)
        else:
            middle.append(float((low + high) / 2)), margin.append(float((high - low) / 2))
    return np.array(middle), np.array(margin)


def _synapse(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor, in_shape):
    weight, bias = weight.float().numpy(), bias.float().numpy()
    if isinstance(module, nn.Linear):
        return nir.Affine(weight=weight, bias=bias) if bias.any() else nir.Linear(weight=weight)
    return nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=weight, stride=module.stride,
                      padding=module.padding, dilation=module.dilation, groups=module.groups,
                      bias=bias)


def _neurons(decay: float, shape) -> nir.LIF:
    ones = np.ones(shape)
    return nir.LIF(tau=ones * (DT / (1.0 - decay)), r=ones, v_leak=0 * ones,
                   v_threshold=ones, v_reset=0 * ones)


def _layer(node, f: FoldedBlock, area: int, timesteps: int, in_shape, out_shape):
    """``(synapse node, LIF node, metadata)`` of one layer (module docstring)."""
    decay, theta = lif_constants(node)
    per_channel = lambda v: v.view(-1, *[1] * (f.weight.dim() - 1))  # noqa: E731
    lattice = lattice_threshold(f, theta, decay, timesteps) if f.compressed else None
    if lattice is None:
        middle, margin = torch.full_like(f.gain, theta), None
    else:
        middle, margin = (torch.from_numpy(v) for v in lattice)
    scale = 1.0 / (middle * (1.0 - decay))  # float64 [C]
    gain = f.gain if f.compressed else f.gain / area
    factor = (gain * scale).float()  # what multiplies the codes: exact products in float32
    weight = f.weight * per_channel(factor.double()) if f.compressed else \
        (f.weight * per_channel(gain * scale)).float()
    info = {"weights": "full precision"}
    if f.compressed:
        info = {"weights": "codes * factor[output channel]",
                "codes": [int(v) for v in f.weight.unique().tolist()],
                "factor": factor.tolist(),
                "margin": None if margin is None else float((margin / middle).min())}
    synapse = _synapse(node.module.synapse, weight, f.shift * scale, in_shape)
    return synapse, _neurons(decay, out_shape), info


def readout_weights(decay: float, timesteps: int) -> list[float]:
    """``c_t`` with logits ``= sum_t c_t I[t]`` for ``u[t] = decay u[t-1] + I[t]`` summed over
    ``t < T``: ``c_t = sum_{s=t}^{T-1} decay^(s-t)``."""
    return [sum(decay ** (s - t) for s in range(t, timesteps)) for t in range(timesteps)]


def to_portable(model: nn.Module, meta: dict) -> nir.NIRGraph:
    """The portable NIR graph of a ``SpikingNetwork`` (module docstring; ``nir.network_graph``);
    ``meta``: how the model was built and fed (``model`` with its ``in_channels`` and
    ``image_size``, ``data``, ``config``), kept in the graph's metadata."""
    net = network(model, "NIR export").eval()
    folded, described = fold_layers(net), {}

    def layer(node, in_shape, out_shape):
        synapse, neuron, described[node.name] = _layer(
            node, folded[node.name], input_pools(net, node)[0], net.timesteps, in_shape,
            out_shape)
        return synapse, neuron

    def pool(node, k):
        return nir.SumPool2d(kernel_size=k, stride=k, padding=np.zeros(2, int))

    def readout(node):  # its currents are the graph's output
        weight = node.module.weight.detach().double() / input_pools(net, node)[0]
        return [("synapse", nir.Affine(weight=weight.float().numpy(),
                                       bias=node.module.bias.detach().float().numpy()))]

    decay, name = float(net.readout_decay), net.nodes[-1].name
    info = {"format": FORMAT, "dt": DT, "timesteps": net.timesteps, "neurons": NEURONS,
            "readout": {"node": f"{name}.synapse", "decay": decay,
                        "weights": readout_weights(decay, net.timesteps),
                        "logits": "u[t] = decay u[t-1] + output[t]; logits = sum over t of u[t]"},
            "decode": DECODE, "layers": described}
    return network_graph(net, meta, layer, pool, readout, info)


def write_portable(model: nn.Module, meta: dict, path) -> Path:
    """``to_portable(model, meta)`` written to ``path``, atomically."""
    return save_graph(to_portable(model, meta), path)


def _readout_decay(info: dict) -> float:
    """The decay of the readout a portable graph's metadata describes."""
    readout = info.get("readout")
    decay = readout.get("decay") if isinstance(readout, dict) else None
    if not (isinstance(decay, float) and 0.0 <= decay <= 1.0):
        raise NotTwinsnnShaped("its metadata describes no readout with a decay in [0, 1]")
    return decay


def read_portable(path) -> tuple[SpikingNetwork, dict]:
    """The network a portable graph describes, run as twinsnn runs its own (``nir.GraphLIF``
    neurons, the readout of its metadata): ``(model in eval mode, meta)``; ``CheckpointError``
    (one line) for a missing, damaged or other file."""
    return read_graph(path, FORMAT, _readout_decay)
