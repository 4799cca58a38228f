"""A plain (non-spiking) CNN trained with twin network augmentation (TNA), on real
Fashion-MNIST by the built-in data set's name; the packed export reloaded into a fresh
network. TNA for networks other than SNNs is the paper's future work.

    python examples/cnn_tna.py [--train-size N] [--epochs E] [--out runs/examples]

The network returns logits ``[B, 10]``: with one timestep there is nothing to sum.
"""
import argparse

import torch
from torch import nn

import twinsnn


def make_net() -> nn.Module:
    """``[B, 1, 28, 28] -> [B, 10]``: two conv-BatchNorm-ReLU-pool stages and an MLP."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, help="train on a stratified subset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    run = twinsnn.fit(make_net, "fashion-mnist", train_size=args.train_size, augment=False,
                      epochs=args.epochs, batch_size=64, lr=2e-3, lr_step_unit="batch",
                      lr_step_size=50, strategy="tna", alpha=1e-4, out_dir=args.out,
                      name="cnn-tna")
    reloaded = twinsnn.load(twinsnn.export(run.model, run.dir / "model.tnn"), model=make_net())
    x = torch.randn(256, 1, 28, 28)  # any input: the two compute the same function
    same = [twinsnn.predict(net, x) for net in (run.model, reloaded)]
    print(f"train loss by epoch: {[round(r['train_loss'], 4) for r in run.metrics]}")
    print(f"validation accuracy of the base: {run.record['val_accuracy/0']:.4f} "
          f"(twin {run.record['val_accuracy/1']:.4f})")
    print(f"reloaded from model.tnn: outputs {'equal' if torch.equal(*same) else 'DIFFER'}")


if __name__ == "__main__":
    main()
