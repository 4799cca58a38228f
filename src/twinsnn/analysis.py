"""Measurements of a spiking network: firing rates, synaptic operations, weight storage and
an energy estimate against the same network run as an ANN.

A spike of a neuron costs one accumulate in every synapse with a non-zero weight that it
drives (its fan-out, through the pool after it): the synaptic operations (SynOps) of the
next layer are ``sum over neurons of spikes x fan-out``. The first conv sees the analog
image (once for a static image, once per frame for event data) and multiplies. The ANN
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
from .fold import codes_and_scale
from .layers import SpikingBlock

ENERGY_PJ = {"mac": 4.6, "acc": 0.9, "add": 0.1}
ENERGY_SOURCE = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
                 "ISSCC 2014, 45 nm at 0.9 V: 32-bit float add 0.9 pJ and multiply 3.7 pJ "
                 "(a multiply-accumulate 4.6 pJ), 32-bit integer add 0.1 pJ")


def spiking_blocks(model: nn.Module) -> list[tuple[str, SpikingBlock]]:
    """``(name, block)`` of every spiking block, in order (``convs.0``, ..., ``fcs.1``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingBlock)]


@contextmanager
def recording(model: nn.Module):
    """Within the block, count every neuron's spikes over all forwards. Yields a dict filled
    as it goes: ``counts`` ``{block: spikes per neuron, summed over T and samples}``,
    ``steps`` ``{block: T * samples}``, ``samples`` and ``first_rows`` (inputs the first
    synapse saw: the samples for static images, T times that for frames)."""
    rec = {"counts": {}, "steps": {}, "samples": 0, "first_rows": 0}
    blocks = spiking_blocks(model)

    def count(name, spikes_tb):
        total = spikes_tb.detach().sum((0, 1), dtype=torch.float64)
        rec["counts"][name] = rec["counts"].get(name, 0) + total
        rec["steps"][name] = rec["steps"].get(name, 0) + spikes_tb.shape[0] * spikes_tb.shape[1]
        if name == blocks[0][0]:
            rec["samples"] += spikes_tb.shape[1]

    def first(_m, inputs, _out):
        rec["first_rows"] += inputs[0].shape[0]

    handles = [block.neuron.register_forward_hook(lambda _m, _i, out, n=name: count(n, out))
               for name, block in blocks]
    handles.append(blocks[0][1].synapse.register_forward_hook(first))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


@contextmanager
def firing_rates(model: nn.Module):
    """Within the block, record the mean spike rate of every spiking block over all forwards.

    Yields a dict filled on exit: ``{block: spikes / (neurons * T * samples)}``.
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


def fan_out(pool: nn.Module, synapse: nn.Module, shape) -> torch.Tensor:
    """``[shape]``: the synapses with a non-zero weight that each neuron of a block (its
    spikes have per-sample ``shape``) drives in ``synapse``, through the block's ``pool``."""
    with torch.no_grad():
        pooled = pool(torch.zeros(1, *shape)).shape[1:]
    mask = (synapse.weight.detach().cpu() != 0).double()
    with torch.enable_grad():
        z = torch.zeros(1, *pooled, dtype=torch.float64, requires_grad=True)
        if isinstance(synapse, nn.Conv2d):
            y = F.conv2d(z, mask, None, synapse.stride, synapse.padding, synapse.dilation,
                         synapse.groups)
        else:
            y = F.linear(z.flatten(1), mask)
        (fan,) = torch.autograd.grad(y.sum(), z)
    fan = fan[0]
    if pooled != tuple(shape):  # a non-overlapping pool: each neuron feeds one pooled cell
        fan = fan.repeat_interleave(shape[-2] // pooled[-2], -2)
        fan = fan.repeat_interleave(shape[-1] // pooled[-1], -1)
    return fan


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
    """Per synaptic layer (``convs.*``, ``fcs.*``, ``out``) and in total, per sample: firing
    rate, MACs of the first layer, SynOps, the ANN's MACs, weight storage, and the energy
    estimates in pJ (``ENERGY_PJ``); ``rec`` from ``recording``."""
    blocks = spiking_blocks(model)
    samples = max(rec["samples"], 1)
    synapses = [(name, b.synapse) for name, b in blocks] + [("out", model.out)]
    rows = []
    for i, (name, synapse) in enumerate(synapses):
        if i < len(blocks):
            counts = rec["counts"][name]
            out_shape, rate = tuple(counts.shape), float(counts.sum()) / (
                counts.numel() * rec["steps"][name])
        else:
            out_shape, rate = (synapse.out_features,), None
        storage = weight_storage(synapse.weight.detach().cpu())
        row = {"layer": name, "input": "analog" if i == 0 else "spikes",
               "neurons": math.prod(out_shape), "firing_rate": rate, "macs": 0, "synops": 0,
               "ann_macs": dense_macs(synapse, out_shape), **storage}
        if i == 0:
            row["macs"] = row["ann_macs"] * rec["first_rows"] / samples
            row["op"] = "mac"
        else:
            before_name, before = blocks[i - 1]
            counts = rec["counts"][before_name].cpu()
            fan = fan_out(before.pool, synapse, tuple(counts.shape))
            row["synops"] = float((counts * fan).sum()) / samples
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
    from .checkpoint import atomic_write

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
