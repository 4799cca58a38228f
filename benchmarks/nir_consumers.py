"""twinsnn's portable NIR graphs in the libraries that import NIR: SpikingJelly, snnTorch and
Norse, each as a user calls its importer, against twinsnn's own predictions on the test set.

    python -m benchmarks.nir_consumers RUN/model.tnn [...] [--samples 10000] [--out FOLDER]
    python -m benchmarks.nir_consumers --table FOLDER     # the records as a Markdown table

For every network file named (a run's ``checkpoint.pt``, ``model.safetensors`` or ``.tnn``):
its portable graph (``twinsnn export --format nir-portable``), imported by each consumer and
run step by step on the test images of the data set it was trained on, batch by batch; the
logits are the readout the graph's metadata describes over the graph's output (the readout's
currents). Each consumer's predictions are compared with the file's own (``twinsnn eval``):
predictions differing, the largest logit difference, seconds. One JSON record per network
and consumer goes to ``--out``, with what had to be worked around (``WORKAROUNDS``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import subprocess
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import nir
import torch
from torch import nn

import twinsnn
from twinsnn.data import build_data
from twinsnn.data.feeds import TensorFeed
from twinsnn.data.transforms import Preprocess
from twinsnn.inference import training_config
from twinsnn.runtime import place

WORKAROUNDS = {
    "flatten": "the imported Flatten(start_dim=0), which flattens the batch too, replaced by "
               "torch.nn.Flatten(1) (NIR's Flatten is over the per-sample shape)",
    "order": "the executor's order of nodes replaced by a topological one (nirtorch.load runs "
             "a node with two inputs before one of them is computed)",
}


def _flatten_per_sample(module: nn.Module) -> bool:
    """Replace each batch-eating ``nn.Flatten(0)`` among ``module``'s children by
    ``nn.Flatten(1)``; whether there was one."""
    found = False
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Flatten) and child.start_dim == 0:
            setattr(module, name, nn.Flatten(1))
            found = True
    return found


class Consumer:
    """A graph imported by one library: ``run(x, steps)`` gives the graph's output ``[T, B,
    ...]`` for a static batch presented at every step, from a fresh state; ``workarounds``:
    what was changed in the imported network (keys of ``WORKAROUNDS``)."""

    package = ""

    def __init__(self, graph: nir.NIRGraph, dt: float):
        self.workarounds: list[str] = []
        self.net = self.load(graph, dt)

    def load(self, graph, dt):
        raise NotImplementedError

    def reset(self):
        return None  # the state the first step starts from

    @torch.no_grad()
    def run(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        state, outputs = self.reset(), []
        for _ in range(steps):
            out, state = self.net(x, state)
            outputs.append(out)
        return torch.stack(outputs)


class SpikingJelly(Consumer):
    """``spikingjelly.activation_based.nir_exchange.import_from_nir`` (single-step mode)."""

    package = "spikingjelly"

    def load(self, graph, dt):
        from spikingjelly.activation_based.nir_exchange import import_from_nir
        return import_from_nir(graph, dt=dt)


class SnnTorch(Consumer):
    """``snntorch.import_nir.import_from_nir``: neurons that keep their state inside
    (``init_hidden``), cleared before every batch."""

    package = "snntorch"

    def load(self, graph, dt):
        from snntorch.import_nir import import_from_nir
        with contextlib.redirect_stdout(io.StringIO()):  # a warning per LIF node
            net = import_from_nir(graph)
        if _flatten_per_sample(net):
            self.workarounds.append("flatten")
        return net

    def reset(self):
        for module in self.net.modules():
            if hasattr(module, "reset_mem"):
                module.reset_mem()
        return None


class Norse(Consumer):
    """``norse.torch.from_nir`` (through ``nirtorch.load``'s graph executor) at step ``dt``."""

    package = "norse"

    def load(self, graph, dt):
        import norse.torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            net = norse.torch.from_nir(graph, dt=dt)
        for node in net.execution_order:
            if isinstance(node.elem, nn.Flatten) and node.elem.start_dim == 0:
                node.elem = nn.Flatten(1)
                self.workarounds.append("flatten")
        order, placed = [], set()
        while len(order) < len(net.execution_order):
            ready = [n for n in net.execution_order if n not in placed
                     and all(s in placed for s in net.graph.find_source_nodes_of(n))]
            order.append(ready[0])
            placed.add(ready[0])
        if order != net.execution_order:
            net.execution_order = order
            self.workarounds.append("order")
        return net


CONSUMERS = {"spikingjelly": SpikingJelly, "snntorch": SnnTorch, "norse": Norse}


def graph_logits(consumer: Consumer, graph: nir.NIRGraph, x: torch.Tensor,
                 batch_size: int = 500) -> torch.Tensor:
    """Logits ``[N, K]`` of a portable ``graph`` run by ``consumer`` on ``x``: the readout its
    metadata describes, ``sum_t weights[t] * output[t]``."""
    info = json.loads(graph.metadata["twinsnn"])
    weights = info["readout"]["weights"]
    out = []
    for i in range(0, len(x), batch_size):
        currents = consumer.run(x[i:i + batch_size], info["timesteps"])
        out.append(sum(w * c.flatten(1) for w, c in zip(weights, currents)))
    return torch.cat(out)


def reference(path: Path, samples: int):
    """The file's network, its first ``samples`` test images (normalized as in training),
    their labels, the logits ``twinsnn eval`` computes for them, and the config."""
    model = twinsnn.load(path)
    cfg = training_config(model.meta, path)
    data = build_data(cfg.data, cfg.model.timesteps)
    test = data.test.subset(torch.arange(min(samples, len(data.test))))
    feed = TensorFeed(test, Preprocess(data, False, cfg.train.channels_last), torch.device("cpu"))
    placed = place(model, cfg.train, torch.device("cpu")).eval()
    with torch.no_grad():
        want = torch.cat([twinsnn.predict(placed, x)
                          for x, _ in feed.in_order(cfg.train.eval_batch_size)])
    model = twinsnn.load(path)  # as the file holds it, for the export
    return model, Preprocess(data, False, False)(test.x), test.y, want, cfg


def compare(consumer_name: str, graph: nir.NIRGraph, x, want, labels) -> dict:
    """Import ``graph`` into a consumer, run it on ``x`` and compare with the logits ``want``."""
    t0 = time.perf_counter()
    info = json.loads(graph.metadata["twinsnn"])
    try:
        consumer = CONSUMERS[consumer_name](graph, info["dt"])
        got = graph_logits(consumer, graph, x)
    except Exception as e:  # what the consumer says, recorded as it says it
        return {"runs": False, "error": f"{type(e).__name__}: {e}"[:500]}
    return {**agreement(got, want, labels), "seconds": round(time.perf_counter() - t0, 1),
            "workarounds": [WORKAROUNDS[w] for w in consumer.workarounds]}


def agreement(got: torch.Tensor, want: torch.Tensor, labels: torch.Tensor) -> dict:
    """How far logits ``got`` ``[N, K]`` are from ``want``: accuracy, the predictions that
    differ (the first 50 indices, with ``want``'s margin between its two highest logits
    there), the largest logit difference and the images whose logits differ by over 1e-4."""
    differ = got.argmax(1) != want.argmax(1)
    top2 = want.topk(2, dim=1).values
    gap = (got - want).abs().amax(1)
    return {"runs": True, "samples": len(got),
            "accuracy": (got.argmax(1) == labels).float().mean().item(),
            "predictions_differing": int(differ.sum()),
            "differing_indices": differ.nonzero().flatten().tolist()[:50],
            "differing_reference_margins": (top2[:, 0] - top2[:, 1])[differ].tolist()[:50],
            "max_abs_logit_difference": gap.max().item(),
            "images_logits_differing": int((gap > 1e-4).sum())}


def machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in cpu.splitlines() if ":" in line)
    return {"cpu": fields.get("Model name", "").strip(),
            "cpu_family": fields.get("CPU family", "").strip(),
            "cpu_model": fields.get("Model", "").strip(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "twinsnn": twinsnn.__version__,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()}


def table(folder: Path) -> str:
    """The records in ``folder`` as Markdown rows: consumer, version, architecture,
    precision, predictions differing of the images, largest logit difference, seconds,
    workarounds."""
    order = {name: i for i, name in enumerate(["twinsnn", *CONSUMERS])}
    labels = {WORKAROUNDS["flatten"]: "Flatten(1) for Flatten(0)",
              WORKAROUNDS["order"]: "nodes in topological order"}
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    records.sort(key=lambda r: (r["arch"], r["precision"], order.get(r["consumer"], 9)))
    rows = ["| consumer | version | architecture | precision | predictions differing | "
            "largest logit difference (images over 1e-4) | seconds | workarounds |",
            "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if not r["runs"]:
            rows.append(f"| {r['consumer']} | {r['version']} | {r['arch']} | {r['precision']} "
                        f"| does not run: {r['error'][:120]} | | | |")
            continue
        rows.append(f"| {r['consumer']} | {r['version']} | {r['arch']} | {r['precision']} | "
                    f"{r['predictions_differing']} of {r['samples']:,} | "
                    f"{r['max_abs_logit_difference']:.1e} ({r['images_logits_differing']:,}) | "
                    f"{r['seconds']:,.0f} | "
                    f"{', '.join(labels[w] for w in r['workarounds']) or 'none'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--table", type=Path, help="print the records in this folder as a "
                                                   "Markdown table")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--consumers", default=",".join(CONSUMERS))
    parser.add_argument("--out", type=Path, help="folder for one JSON record per model and "
                                                 "consumer")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    logging.disable(logging.WARNING)  # the importers' notes on every node
    for path in args.models:
        model, x, labels, want, cfg = reference(path, args.samples)
        with tempfile.TemporaryDirectory() as folder:
            graph_path = twinsnn.export(model, Path(folder) / "portable.nir",
                                        format="nir-portable")
            graph = nir.read(graph_path)
            ours = twinsnn.load(graph_path)
            t0 = time.perf_counter()
            with torch.no_grad():
                read_back = torch.cat([twinsnn.predict(ours, x[i:i + 1000])
                                       for i in range(0, len(x), 1000)])
            twinsnn_seconds = time.perf_counter() - t0
        precision = "ternary" if cfg.quant.mode == "ternary" else (
            "binary" if cfg.quant.mode == "binary" else "full precision")
        rows = {"twinsnn": {**agreement(read_back, want, labels),
                            "seconds": round(twinsnn_seconds, 1), "workarounds": []}}
        for name in args.consumers.split(","):
            rows[name] = compare(name, graph, x, want, labels)
        for name, row in rows.items():
            record = {"model": str(path), "arch": cfg.model.arch, "precision": precision,
                      "consumer": name, "version": version(CONSUMERS[name].package
                                                           if name in CONSUMERS else "twinsnn"),
                      "reference_accuracy": (want.argmax(1) == labels).float().mean().item(),
                      **row, "machine": machine()}
            print(json.dumps({k: v for k, v in record.items() if k not in (
                "machine", "differing_indices", "differing_reference_margins")}))
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                stem = f"{cfg.model.arch}-{precision.replace(' ', '-')}-{name}.json"
                (args.out / stem).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
