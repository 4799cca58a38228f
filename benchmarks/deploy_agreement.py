"""How exactly a model's deployable forms reproduce its predictions on the test set: the
NIR graph folded into the neurons and into the weights (read back by twinsnn's reader) and,
for a compressed model, the integer path.

    python -m benchmarks.deploy_agreement RUN/checkpoint.pt [--samples 10000]

Prints JSON: accuracy of each form, predictions that differ from the checkpoint's, the
largest logit difference, and the seconds each form took.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from twinsnn.data import build_data
from twinsnn.inference import load, training_config
from twinsnn.fold import fold_layers
from twinsnn.integer import integer_model
from twinsnn.losses import logits_of
from twinsnn.nir import read_graph, write_graph
from twinsnn.data.transforms import Preprocess
from twinsnn.runtime import place


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()
    model, meta = load(args.checkpoint)
    cfg = training_config(meta, args.checkpoint)
    data = build_data(cfg.data, cfg.model.timesteps)
    preprocess = Preprocess(data, False, cfg.train.channels_last)
    x, y = data.test.x[: args.samples], data.test.y[: args.samples]
    forms = {"checkpoint": model}
    with tempfile.TemporaryDirectory() as folder:
        for fold in ("neurons", "weights"):
            forms[f"nir_{fold}"] = read_graph(write_graph(model, meta, Path(folder) / f"{fold}.nir",
                                                          fold))[0]
    if all(f.compressed for f in list(fold_layers(model).values())[1:]):
        forms["integer"] = integer_model(model)
    result, logits = {"samples": len(x)}, {}
    for name, net in forms.items():
        net = place(net, cfg.train, torch.device("cpu")).eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            logits[name] = torch.cat([logits_of(net(preprocess(x[i:i + 1000])))
                                      for i in range(0, len(x), 1000)])
        pred = logits[name].argmax(1)
        result[name] = {"accuracy": (pred == y).float().mean().item(),
                        "predictions_differing": int((pred != logits["checkpoint"].argmax(1)).sum()),
                        "max_abs_logit_difference": (logits[name] - logits["checkpoint"]).abs().max().item(),
                        "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
