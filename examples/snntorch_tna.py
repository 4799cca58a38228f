"""An snnTorch network trained with twin network augmentation (TNA), its base compressed to
ternary weights for the last epoch, on real Fashion-MNIST through a torch DataLoader; the
packed export reloaded into a fresh network of the same class.

    python examples/snntorch_tna.py [--train-size N] [--epochs E] [--out runs/examples]

The network is snnTorch's own: ``snn.Leaky`` neurons holding their membrane between calls
(``init_hidden=True``), stepped over T inside ``forward``. twinsnn clears each network's
neurons before every batch, instance by instance (``twinsnn.reset_states``), so the base
and its twin never share a state.
"""
import argparse

import snntorch as snn
import torch
from torch import nn
from torch.utils.data import DataLoader

import twinsnn

T = 4


class Net(nn.Module):
    """``[B, 1, 28, 28] -> [T, B, 10]``: the image at every step through two spiking conv
    layers and a spiking FC layer; the output layer's membrane potential at each step."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.norm2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc, self.norm3 = nn.Linear(32 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128)
        self.out = nn.Linear(128, 10)
        self.lif1, self.lif2, self.lif3 = (snn.Leaky(beta=0.5, init_hidden=True)
                                           for _ in range(3))
        self.readout = snn.Leaky(beta=0.5, init_hidden=True, output=True,
                                 reset_mechanism="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        potentials = []
        for _ in range(T):
            h = nn.functional.avg_pool2d(self.lif1(self.norm1(self.conv1(x))), 2)
            h = nn.functional.avg_pool2d(self.lif2(self.norm2(self.conv2(h))), 2)
            h = self.lif3(self.norm3(self.fc(h.flatten(1))))
            _, membrane = self.readout(self.out(h))
            potentials.append(membrane)
        return torch.stack(potentials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, help="train on a stratified subset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    train, val, _ = twinsnn.datasets("fashion-mnist", train_size=args.train_size)
    loader = DataLoader(train, batch_size=64, shuffle=True)  # its order: from the run's seed
    run = twinsnn.fit(Net, loader, val=val, epochs=args.epochs, lr=2e-3, lr_step_unit="batch",
                      lr_step_size=50, strategy="tna", alpha=1e-5, mode="ternary",
                      start_epoch=args.epochs - 1, delta_rule="mean_abs", delta=0.5,
                      lr_at_switch=2e-3, out_dir=args.out, name="snntorch-tna")
    reloaded = twinsnn.load(twinsnn.export(run.model, run.dir / "model.tnn"), model=Net())
    x = val[:1000][0]
    same = [twinsnn.predict(net, x) for net in (run.model, reloaded)]
    print(f"train loss by epoch: {[round(r['train_loss'], 4) for r in run.metrics]}")
    print(f"validation accuracy of the base: {run.record['val_accuracy/0']:.4f}")
    print(f"ternary layers: {', '.join(twinsnn.compressed_layers(run.model))}")
    print(f"reloaded from model.tnn: outputs {'equal' if torch.equal(*same) else 'DIFFER'}")


if __name__ == "__main__":
    main()
