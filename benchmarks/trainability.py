"""Does the literal net learn? Firing rates at initialization and the training loss over
the first steps, with and without normalization after the hidden FC layers.

    python -m benchmarks.trainability [--steps 100] [--width 0.125] [--batch 128]

Writes docs/trainability.json and prints a table. Uses real Fashion-MNIST training images
(the validation split is untouched), the paper's Adam lr 0.01 and PyTorch's default init.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch

from twinsnn.analysis import firing_rates
from twinsnn.config import load_config
from twinsnn.data import build_data
from twinsnn.data.transforms import Preprocess
from twinsnn.models import build_model
from twinsnn.train import Parts, build_trainer


def probe(fc_norm: str, steps: int, width: float, batch: int, seed: int) -> dict:
    cfg = load_config("fmnist-cpu", {"fc_norm": fc_norm, "width": width, "batch_size": batch,
                                     "train.lr": 0.01, "seed": seed, "train.compile": False,
                                     "train.device": "cpu"})
    data = build_data(cfg.data, cfg.model.timesteps)
    factory = functools.partial(build_model, cfg.model, data.num_classes, data.in_channels,
                                data.image_size)
    t = build_trainer(cfg, Parts(factory))
    net = t.cohort.members[0]
    prep = Preprocess(data, augment=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train), generator=gen)
    x0 = prep(data.train.x[order[:batch]], gen)
    with torch.no_grad(), firing_rates(net) as init_rates:
        net(x0)
    losses = []
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        loss, _, _ = t.step(prep(data.train.x[idx], gen), data.train.y[idx])
        losses.append(round(loss.item(), 4))
    with torch.no_grad(), firing_rates(net) as end_rates:
        net(x0)
    return {"fc_norm": fc_norm, "init_rates": init_rates, "rates_after": end_rates,
            "loss": losses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/trainability.json")
    args = p.parse_args()
    t0 = time.time()
    results = [probe(n, args.steps, args.width, args.batch, args.seed) for n in ("none", "batchnorm")]
    Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                                          "machine": platform.processor() or platform.machine(),
                                          "wall_s": round(time.time() - t0, 1),
                                          "results": results}, indent=1) + "\n")
    layers = list(results[0]["init_rates"])
    print("| fc_norm | " + " | ".join(layers) + " | loss step 1 | loss step 50 | loss last |")
    print("|---" * (len(layers) + 4) + "|")
    for r in results:
        rates = " | ".join(f"{100 * r['init_rates'][l]:.2f}%" for l in layers)
        l = r["loss"]
        print(f"| {r['fc_norm']} | {rates} | {l[0]:.3f} | {l[min(49, len(l) - 1)]:.3f} | {l[-1]:.3f} |")


if __name__ == "__main__":
    main()
