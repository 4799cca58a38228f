"""A network of one's own without BatchNorm (GroupNorm and GELU), trained as the README's
quickstart trains one: a twin (alpha 1e-4), ternary weights from epoch 1 of 2 with
D = 0.5 x mean|W|, batch 64, lr 0.002, on the real Fashion-MNIST (55,000 training images,
5,000 validation). Prints each epoch's validation accuracy and training loss.

    python docs/runs/own-network/groupnorm_gelu.py OUT [key=value ...]   (e.g. scale=none)
"""
import json
import sys
import time

from torch import nn

import twinsnn


def make_net() -> nn.Module:
    """conv-GN-GELU-pool x2, then a hidden linear layer with GELU and the output layer: the
    hidden linear layer (compressed) has no normalization after it."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.GELU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32),
                         nn.GELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 128),
                         nn.GELU(), nn.Linear(128, 10))


if __name__ == "__main__":
    out, extra = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    train, val, _ = twinsnn.datasets("fashion-mnist")
    t0 = time.perf_counter()
    run = twinsnn.fit(make_net, train, val=val, epochs=2, batch_size=64, lr=2e-3,
                      strategy="tna", alpha=1e-4, mode="ternary", start_epoch=1,
                      delta_rule="mean_abs", delta=0.5, out_dir=out, name="groupnorm-gelu",
                      progress=False, **extra)
    print(json.dumps({"settings": extra, "wall_s": round(time.perf_counter() - t0, 1),
                      "val_acc": [r["val_acc/0"] for r in run.metrics],
                      "train_loss": [r["train_loss"] for r in run.metrics]}))
