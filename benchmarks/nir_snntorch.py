"""Run a twinsnn NIR export in snnTorch (``snntorch.import_nir``, through nirtorch) and compare
its predictions with the checkpoint's and with twinsnn's own NIR reader.

    python -m benchmarks.nir_snntorch RUN/checkpoint.pt [--samples 10000] [--fold weights]

Needs ``pip install snntorch nirtorch`` (``--no-deps`` keeps the installed torch). snnTorch
1.0.0 maps no ``LI`` node, so the graph is handed over without its readout: snnTorch runs
every layer up to the output currents, and the readout (``u = a u + I``, logits = sum over
T) is applied here. nirtorch maps NIR's ``Flatten(start_dim=0)``, which is over the
per-sample shape, to ``torch.nn.Flatten(0)``, which would also flatten the batch: so the
snnTorch network is run one sample at a time, its neuron states reset between samples.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nir
import torch

from twinsnn.data import build_data
from twinsnn.inference import load, training_config
from twinsnn.losses import logits_of
from twinsnn.nir import read_graph, to_graph
from twinsnn.data.transforms import Preprocess


def without_readout(graph: nir.NIRGraph) -> tuple[nir.NIRGraph, float]:
    """The graph ending at the output layer's currents, and the readout's decay."""
    readout = graph.nodes["out.li"]
    decay = float(1 - json.loads(graph.metadata["twinsnn"])["dt"] / readout.tau[0])
    nodes = {k: v for k, v in graph.nodes.items() if k != "out.li"}
    edges = [(a, b) for a, b in graph.edges if "out.li" not in (a, b)] + [("out.synapse",
                                                                           "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata), decay


def snntorch_logits(graph: nir.NIRGraph, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    import snntorch
    from snntorch.import_nir import import_from_nir

    body, decay = without_readout(graph)
    net = import_from_nir(body)
    leaky = [m for m in net.modules() if isinstance(m, snntorch.Leaky)]
    out = []
    with torch.no_grad():
        for sample in x:
            for m in leaky:
                m.reset_mem()
            state, u, total = None, 0.0, 0.0
            for _ in range(timesteps):
                current, state = net(sample, state)
                u = decay * u + current
                total = total + u
            out.append(total)
    return torch.stack(out)


def read_graph_from(graph: nir.NIRGraph):
    """twinsnn's reader on an in-memory graph (through a temporary file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "g.nir"
        nir.write(path, graph)
        return read_graph(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--fold", choices=["weights", "neurons"], default="weights")
    args = parser.parse_args()
    model, meta = load(args.checkpoint)
    graph = to_graph(model, meta, args.fold)
    cfg = training_config(meta, args.checkpoint)
    data = build_data(cfg.data, cfg.model.timesteps)
    x = Preprocess(data, False, False)(data.test.x[: args.samples])
    reader, _ = read_graph_from(graph)
    with torch.no_grad():
        want = torch.cat([logits_of(model(x[i:i + 1000])) for i in range(0, len(x), 1000)])
        ours = torch.cat([logits_of(reader(x[i:i + 1000])) for i in range(0, len(x), 1000)])
    t0 = time.perf_counter()
    try:
        theirs = snntorch_logits(graph, x, cfg.model.timesteps)
    except Exception as e:  # report what the outside library says
        print(f"snnTorch could not run the {args.fold}-folded graph: {type(e).__name__}: {e}")
        return
    seconds = time.perf_counter() - t0
    pred = {k: v.argmax(1) for k, v in (("checkpoint", want), ("twinsnn", ours),
                                         ("snntorch", theirs))}
    print(json.dumps({
        "samples": len(x), "fold": args.fold, "snntorch_seconds": round(seconds, 1),
        "accuracy": {k: (p == data.test.y[: len(x)]).float().mean().item() for k, p in pred.items()},
        "predictions_differing": {
            "snntorch_vs_checkpoint": int((pred["snntorch"] != pred["checkpoint"]).sum()),
            "snntorch_vs_twinsnn_reader": int((pred["snntorch"] != pred["twinsnn"]).sum()),
            "twinsnn_reader_vs_checkpoint": int((pred["twinsnn"] != pred["checkpoint"]).sum())},
        "max_abs_logit_difference": {
            "snntorch_vs_twinsnn_reader": (theirs - ours).abs().max().item(),
            "twinsnn_reader_vs_checkpoint": (ours - want).abs().max().item()}}, indent=2))


if __name__ == "__main__":
    main()
