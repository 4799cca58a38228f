"""Measurements of a spiking network: firing rates, synaptic operations, weight storage and
an energy estimate against the same network run as an ANN.

A spike of a neuron costs one accumulate in every synapse with a non-zero weight that it
drives (its fan-out): the synaptic operations (SynOps) of a layer are ``sum over its inputs
of input events x fan-out``, where an input is a spike, a sum of spikes (residual
additions) or a pooled window of them. The first layer sees the analog image (once for a
static image, once per frame for event data) and multiplies. The ANN
runs every layer once, densely: one multiply-accumulate (MAC) per weight and output
position. Per-operation energies (``ENERGY_PJ``) are Horowitz's 45 nm figures; synapses
only: neuron updates, memory traffic and the readout's leak are not counted.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .files import atomic_write
from .fold import codes_and_scale
from .layers import SpikingBlock
from .structure import input_pools, layers, network, readout

ENERGY_PJ = {"mac": 4.6, "acc": 0.9, "add": 0.1}
ENERGY_SOURCE = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
                 "ISSCC 2014, 45 nm at 0.9 V: 32-bit float add 0.9 pJ and multiply 3.7 pJ "
                 "(a multiply-accumulate 4.6 pJ), 32-bit integer add 0.1 pJ")


def spiking_blocks(model: nn.Module) -> list[tuple[str, SpikingBlock]]:
    """``(name, block)`` of every spiking layer of any model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingBlock)]


@contextmanager
def recording(model: nn.Module):
    """Within the block, count what every layer of a ``SpikingNetwork`` receives and emits
    over all forwards. Yields a dict filled as it goes: ``inputs`` ``{layer or readout:
    its synapse's input summed over the rows it saw, per-sample shape}``, ``rows``
    ``{name: rows seen}`` (samples for a static image, T times that otherwise), ``spikes``
    ``{layer: spikes per neuron}``, ``steps`` ``{layer: T * samples}`` and ``samples``."""
    net = network(model, "the operation report")
    rec = {"inputs": {}, "rows": {}, "spikes": {}, "steps": {}, "samples": 0}
    synapses = [(n.name, n.module.synapse) for n in layers(net)] + \
        [(readout(net).name, readout(net).module)]

    def received(name, x):
        rec["inputs"][name] = rec["inputs"].get(name, 0) + x.detach().sum(0, dtype=torch.float64)
        rec["rows"][name] = rec["rows"].get(name, 0) + x.shape[0]

    def emitted(name, spikes_tb):
        total = spikes_tb.detach().sum((0, 1), dtype=torch.float64)
        rec["spikes"][name] = rec["spikes"].get(name, 0) + total
        rec["steps"][name] = rec["steps"].get(name, 0) + spikes_tb.shape[0] * spikes_tb.shape[1]

    def sample_count(_m, inputs, _out):
        x = inputs[0]
        rec["samples"] += x.shape[0] if x.dim() == 4 else x.shape[1]

    handles = [synapse.register_forward_hook(lambda _m, i, _o, n=name: received(n, i[0]))
               for name, synapse in synapses]
    handles += [node.module.neuron.register_forward_hook(
        lambda _m, _i, out, n=node.name: emitted(n, out)) for node in layers(net)]
    handles.append(net.register_forward_hook(sample_count))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


@contextmanager
def firing_rates(model: nn.Module):
    """Within the block, record the mean spike rate of every spiking layer over all forwards.

    Yields a dict filled on exit: ``{layer: spikes / (neurons * T * samples)}``.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, block in spiking_blocks(model):
        def hook(_m, _inp, spikes_tb, layer=name):
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


def dense_macs(synapse: nn.Module, out_shape) -> int:
    """Multiply-accumulates of one dense pass of a conv or linear layer whose output (one
    sample) has ``out_shape``."""
    return math.prod(out_shape) * (synapse.weight[0].numel())


def fan_out(synapse: nn.Module, shape) -> torch.Tensor:
    """``[shape]``: the synapses with a non-zero weight that each input of ``synapse`` (of
    per-sample ``shape``) drives."""
    mask = (synapse.weight.detach().cpu() != 0).double()
    with torch.enable_grad():
        z = torch.zeros(1, *shape, dtype=torch.float64, requires_grad=True)
        if isinstance(synapse, nn.Conv2d):
            y = F.conv2d(z, mask, None, synapse.stride, synapse.padding, synapse.dilation,
                         synapse.groups)
        else:
            y = F.linear(z.flatten(1), mask)
        (fan,) = torch.autograd.grad(y.sum(), z)
    return fan[0]


def weight_storage(weight: torch.Tensor) -> dict:
    """Mode, zero fraction and bytes of a weight tensor: float32, or packed codes (2 bits
    ternary, 1 bit binary) plus a float32 scale per channel (or one) where it is not 1."""
    factored = codes_and_scale(weight)
    n = weight.numel()
    row = {"weights": n, "zero_weights": (weight == 0).sum().item() / n, "mode": "float32",
           "bytes_float32": 4 * n, "bytes_packed": 4 * n}
    if factored is not None:
        codes, scale = factored
        ternary = bool((codes == 0).any())
        kept = scale[scale > 0].unique()
        scale_bytes = 0 if kept.tolist() in ([], [1.0]) else 4 * (1 if len(kept) == 1 else len(scale))
        row["mode"] = "ternary" if ternary else "binary"
        row["bytes_packed"] = -(-n * (2 if ternary else 1) // 8) + scale_bytes
    return row


def operations(model: nn.Module, rec: dict) -> dict:
    """Per synaptic layer (every layer, then the readout) and in total, per sample: firing
    rate, MACs of the layers that read the analog input, SynOps, the ANN's MACs, weight
    storage, and the energy estimates in pJ (``ENERGY_PJ``); ``rec`` from ``recording``.
    A layer's input events are its input values times the area of the average pools before
    it (a pooled value is a window's spike count over its area)."""
    net = network(model, "the operation report")
    samples = max(rec["samples"], 1)
    rows = []
    for node in layers(net) + [readout(net)]:
        synapse = node.module.synapse if node.kind == "layer" else node.module
        area, _, analog = input_pools(net, node)
        inputs = rec["inputs"][node.name].cpu()
        with torch.no_grad():
            out_shape = tuple(synapse(torch.zeros(1, *inputs.shape, dtype=synapse.weight.dtype,
                                                  device=synapse.weight.device)).shape[1:])
        rate = None
        if node.kind == "layer":
            spikes = rec["spikes"][node.name]
            rate = float(spikes.sum()) / (spikes.numel() * rec["steps"][node.name])
        storage = weight_storage(synapse.weight.detach().cpu())
        row = {"layer": node.name, "input": "analog" if analog else "spikes",
               "neurons": math.prod(out_shape), "firing_rate": rate, "macs": 0, "synops": 0,
               "ann_macs": dense_macs(synapse, out_shape), **storage}
        if analog:
            row["macs"] = row["ann_macs"] * rec["rows"][node.name] / samples
            row["op"] = "mac"
        else:
            events = inputs.double() * area
            row["synops"] = float((events * fan_out(synapse, tuple(inputs.shape))).sum()) / samples
            row["op"] = "acc" if storage["mode"] == "float32" else "add"
        rows.append(row)
    total = {k: sum(r[k] for r in rows) for k in
             ("macs", "synops", "ann_macs", "weights", "bytes_float32", "bytes_packed")}
    energy = {"snn": sum(ENERGY_PJ["mac"] * r["macs"] + ENERGY_PJ["acc"] * r["synops"]
                         for r in rows),
              "ann": ENERGY_PJ["mac"] * total["ann_macs"]}
    if any(r["op"] == "add" for r in rows):
        energy["snn_integer"] = sum(ENERGY_PJ["mac"] * r["macs"] + ENERGY_PJ[r["op"]] * r["synops"]
                                    for r in rows)
    return {"per_sample": True, "layers": rows, "total": total, "energy_pj": energy,
            "energy_per_op_pj": ENERGY_PJ, "energy_source": ENERGY_SOURCE}


def format_operations(ops: dict) -> str:
    """Text table of ``operations``."""
    head = (f"{'layer':8} {'input':6} {'rate':>6} {'MACs':>11} {'SynOps':>11} {'ANN MACs':>11} "
            f"{'weights':>9} {'zero':>6} {'mode':>7} {'f32 B':>9} {'packed B':>9}")
    lines = ["operations per sample (SynOps: spikes of the layer before x fan-out, over T):",
             head]
    for r in ops["layers"] + [{"layer": "total", "input": "", "firing_rate": None,
                               "zero_weights": None, "mode": "", **ops["total"]}]:
        rate = "" if r["firing_rate"] is None else f"{r['firing_rate']:.4f}"
        zero = "" if r["zero_weights"] is None else f"{100 * r['zero_weights']:.1f}%"
        lines.append(f"{r['layer']:8} {r['input']:6} {rate:>6} {r['macs']:>11,.0f} "
                     f"{r['synops']:>11,.0f} {r['ann_macs']:>11,} {r['weights']:>9,} {zero:>6} "
                     f"{r['mode']:>7} {r['bytes_float32']:>9,} {r['bytes_packed']:>9,}")
    e = ops["energy_pj"]
    lines.append(f"energy per sample: SNN {e['snn'] / 1e3:,.1f} nJ (float accumulates), "
                 + (f"{e['snn_integer'] / 1e3:,.1f} nJ with integer adds in the compressed "
                    "layers, " if "snn_integer" in e else "")
                 + f"ANN {e['ann'] / 1e3:,.1f} nJ; SNN/ANN {e['snn'] / e['ann']:.3f}")
    lines.append(f"per-operation energies: {ops['energy_source']}")
    return "\n".join(lines)


def save_figure(fig, out: Path) -> Path:
    """Write ``fig`` atomically to ``out`` in the format its suffix names; ``ConfigError``
    for a suffix matplotlib cannot write, ``WriteError`` for a path it cannot."""
    out = Path(out)
    kinds = fig.canvas.get_supported_filetypes()
    if out.suffix[1:] not in kinds:
        raise ConfigError(f"cannot draw {out}: name a file ending in one of "
                          f"{', '.join('.' + k for k in sorted(kinds))}")
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix[1:]))
    return out


def plot_operations(ops: dict, out: Path) -> Path:
    """Bar chart of each layer's operations per sample (the first layer's MACs, SynOps
    elsewhere) beside the ANN's MACs, log scale; written atomically to ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ops["layers"]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows)), 4))
    try:
        ax.bar([i - 0.2 for i in x], [r["macs"] or r["synops"] for r in rows], 0.4,
               label="SNN: MACs (first layer), SynOps (others)")
        ax.bar([i + 0.2 for i in x], [r["ann_macs"] for r in rows], 0.4, label="ANN: MACs")
        ax.set_xticks(list(x), [r["layer"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("operations per sample")
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)
