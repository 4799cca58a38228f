"""A SpikingJelly network trained with twin network augmentation (TNA), its base compressed
to ternary weights for the last epoch, on real Fashion-MNIST as a torch Dataset; the packed
export reloaded into a fresh network of the same class.

    python examples/spikingjelly_tna.py [--train-size N] [--epochs E] [--out runs/examples]

The network is SpikingJelly's own: multi-step ``LIFNode``s with its ``ATan`` surrogate and
its ``layer`` wrappers. twinsnn repeats each static image over T (``encoding="repeat"``)
and clears the neurons' state before every batch (``twinsnn.reset_states``).
"""
import argparse

import torch
from spikingjelly.activation_based import layer, neuron, surrogate
from torch import nn

import twinsnn

T = 4


def make_net() -> nn.Module:
    """``[T, B, 1, 28, 28] -> [T, B, 10]``: two spiking conv layers, a spiking FC layer and a
    linear readout, whose outputs twinsnn sums over T into the logits."""
    def lif():
        return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m")

    return nn.Sequential(
        layer.Conv2d(1, 16, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(16, step_mode="m"), lif(), layer.AvgPool2d(2, step_mode="m"),
        layer.Conv2d(16, 32, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(32, step_mode="m"), lif(), layer.AvgPool2d(2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(32 * 7 * 7, 128, bias=False, step_mode="m"),
        layer.BatchNorm1d(128, step_mode="m"), lif(),
        layer.Linear(128, 10, step_mode="m"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, help="train on a stratified subset")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/examples")
    args = parser.parse_args()
    train, val, _ = twinsnn.datasets("fashion-mnist", train_size=args.train_size)
    run = twinsnn.fit(make_net, train, val=val, encoding="repeat", timesteps=T,
                      epochs=args.epochs, batch_size=64, lr=2e-3, lr_step_unit="batch",
                      lr_step_size=50, strategy="tna", alpha=1e-5, mode="ternary",
                      start_epoch=args.epochs - 1, delta_rule="mean_abs", delta=0.5,
                      lr_at_switch=2e-3, out_dir=args.out, name="spikingjelly-tna")
    reloaded = twinsnn.load(twinsnn.export(run.model, run.dir / "model.tnn"), model=make_net())
    x = val[:1000][0].expand(T, 1000, 1, 28, 28)
    same = [twinsnn.predict(net, x) for net in (run.model, reloaded)]
    print(f"train loss by epoch: {[round(r['train_loss'], 4) for r in run.metrics]}")
    print(f"validation accuracy of the base: {run.record['val_accuracy/0']:.4f}")
    print(f"ternary layers: {', '.join(twinsnn.compressed_layers(run.model))}")
    print(f"reloaded from model.tnn: outputs {'equal' if torch.equal(*same) else 'DIFFER'}")


if __name__ == "__main__":
    main()
