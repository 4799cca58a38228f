"""The smallest NIR graphs that show what keeps SpikingJelly, snnTorch and Norse from running
a graph as NIR defines it, each run in every consumer with what the consumer says.

    python -m benchmarks.nir_consumer_bugs

Each case prints, per consumer, ``ok`` with the largest difference from the graph's meaning
(computed here by hand), or the error the import or the run raised. ``docs/deploy.md``
("Consumer bugs") reports them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from importlib.metadata import version

import nir
import numpy as np
import torch

DT = 1e-4
W = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], np.float32)


def flatten_graph():
    """Input [1, 2, 2] -> Flatten(start_dim=0) -> Linear(4 -> 2) -> Output, on a batch of 3:
    NIR's Flatten is over the per-sample shape, so the output is ``x.flatten(1) @ W.T``."""
    graph = nir.NIRGraph.from_list(nir.Input(input_type=np.array([1, 2, 2])),
                                   nir.Flatten(input_type=np.array([1, 2, 2]), start_dim=0),
                                   nir.Linear(weight=W), nir.Output(output_type=np.array([2])))
    x = torch.arange(12, dtype=torch.float32).view(3, 1, 2, 2)
    return graph, x, [x.flatten(1) @ torch.from_numpy(W).T]


def readout_graph():
    """Input [2] -> Affine -> LI (a non-spiking leaky readout, ``tau = 2 dt``, ``r = 2``) ->
    Output: ``u[t] = u[t-1] / 2 + I``, two steps."""
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type=np.array([2])),
        nir.Affine(weight=W[:, :2].copy(), bias=np.zeros(2, np.float32)),
        nir.LI(tau=np.full(2, 2 * DT), r=np.full(2, 2.0), v_leak=np.zeros(2)),
        nir.Output(output_type=np.array([2])))
    x = torch.ones(1, 2)
    current = x @ torch.from_numpy(W[:, :2]).T
    return graph, x, [current, 1.5 * current]


def residual_graph():
    """A residual sum at a node: Input [2] -> Linear a -> Linear b -> Linear c, and Linear s
    from the input straight to c (NIR sums c's inputs): ``c(b(a(x)) + s(x))``."""
    eye = np.eye(2, dtype=np.float32)
    nodes = {"input": nir.Input(input_type=np.array([2])), "a": nir.Linear(weight=2 * eye),
             "b": nir.Linear(weight=3 * eye), "s": nir.Linear(weight=10 * eye),
             "c": nir.Linear(weight=eye), "output": nir.Output(output_type=np.array([2]))}
    edges = [("input", "a"), ("a", "b"), ("b", "c"), ("input", "s"), ("s", "c"),
             ("c", "output")]
    x = torch.ones(1, 2)
    return nir.NIRGraph(nodes=nodes, edges=edges), x, [x * 16]


def avgpool_graph():
    """Input [1, 2, 2] -> AvgPool2d(2) -> Output: the mean of the four values."""
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type=np.array([1, 2, 2])),
        nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                      padding=np.array([0, 0])),
        nir.Output(output_type=np.array([1, 1, 1])))
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 2, 2)
    return graph, x, [x.mean((2, 3), keepdim=True)]


def lif_graph(r: float, v_leak: float, thresholds):
    """Input [2] -> Linear(identity) -> LIF(tau = 2 dt, ``r``, ``v_leak``, per-neuron
    ``thresholds``) -> Output, input 0.8 for two steps: ``v[t] = v[t-1] / 2 + (v_leak + r x)
    / 2``."""
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type=np.array([2])), nir.Linear(weight=np.eye(2, dtype=np.float32)),
        nir.LIF(tau=np.full(2, 2 * DT), r=np.full(2, r), v_leak=np.full(2, v_leak),
                v_threshold=np.array(thresholds, float), v_reset=np.zeros(2)),
        nir.Output(output_type=np.array([2])))
    x, v, want = torch.full((1, 2), 0.8), torch.zeros(1, 2), []
    for _ in range(2):
        v = v / 2 + (v_leak + r * x) / 2
        spike = (v > torch.tensor(thresholds)).float()
        v = torch.where(spike > 0, 0.0, v)
        want.append(spike)
    return graph, x, want


CASES = {
    "flatten over the batch": flatten_graph,
    "non-spiking readout (LI)": readout_graph,
    "residual sum": residual_graph,
    "AvgPool2d": avgpool_graph,
    "LIF with r = 2 (r = tau / dt)": lambda: lif_graph(2.0, 0.0, [1.0, 1.0]),
    "LIF with v_leak != 0": lambda: lif_graph(1.0, 0.4, [0.5, 0.5]),
    "LIF with one threshold per neuron": lambda: lif_graph(1.0, 0.0, [0.2, 0.4]),
}


def spikingjelly(graph):
    from spikingjelly.activation_based.nir_exchange import import_from_nir
    return import_from_nir(graph, dt=DT), None


def snntorch(graph):
    from snntorch.import_nir import import_from_nir
    with contextlib.redirect_stdout(io.StringIO()):
        return import_from_nir(graph), None


def norse(graph):
    import norse.torch
    return norse.torch.from_nir(graph, dt=DT), None


CONSUMERS = {"spikingjelly": spikingjelly, "snntorch": snntorch, "norse": norse}


def run(consumer, graph, x, steps):
    net, state = CONSUMERS[consumer](graph)
    outputs = []
    with torch.no_grad():
        for _ in range(steps):
            out, state = net(x, state)
            outputs.append(out)
    return outputs


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in
                                   ("nir", "nirtorch", "spikingjelly", "snntorch", "norse",
                                    "torch")))
    for case, make in CASES.items():
        print(f"\n{case}")
        for consumer in CONSUMERS:
            graph, x, want = make()
            try:
                got = run(consumer, graph, x, len(want))
                error = max((g.reshape(w.shape) - w).abs().max().item() if g.numel() == w.numel()
                            else float("inf") for g, w in zip(got, want))
                shapes = [tuple(g.shape) for g in got]
                print(f"  {consumer:13s} ran: largest difference from NIR's meaning {error:g}"
                      f" (output shapes {shapes})")
            except Exception as e:  # what the consumer says
                print(f"  {consumer:13s} {type(e).__name__}: {str(e).splitlines()[0][:160]}")


if __name__ == "__main__":
    main()
