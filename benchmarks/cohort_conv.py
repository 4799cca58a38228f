"""Can a TNA cohort run its convolutions in one pass? Two members' convolutions as two calls
against one grouped convolution over the concatenated channels (the only exact one-pass form,
since the members' weights differ), forward + backward, channels-last.

    python -m benchmarks.cohort_conv [--width 0.25] [--batch 64] [--timesteps 5] [--rounds 3]

The layers are CIFARNet's convolutions after the first (which sees the static image) at the
given width, on ``T * batch`` folded inputs. Prints, per round, the summed median time of
each form over the layers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from twinsnn.config import ModelConfig
from twinsnn.models import cifarnet
from twinsnn.structure import layers, shapes


def conv_shapes(width: float, size: int = 32) -> list[tuple[int, int, int]]:
    """``(in_channels, out_channels, height)`` of every conv after the first."""
    model = cifarnet(ModelConfig(width=width), 10, 3, (size, size))
    sizes = shapes(model, (3, size, size))
    return [(n.module.synapse.in_channels, n.module.synapse.out_channels, sizes[n.inputs[0]][-2])
            for n in layers(model)[1:] if isinstance(n.module.synapse, torch.nn.Conv2d)]


def _median_ms(fn, repeats: int = 5) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _tensor(*shape):
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()


def cohort_ms(shapes, n: int, grouped: bool) -> float:
    """Forward + backward of both members' convolutions, summed over ``shapes``."""
    total = 0.0
    for cin, cout, size in shapes:
        if grouped:
            x, w = _tensor(n, 2 * cin, size, size), _tensor(2 * cout, cin, 3, 3)
            total += _median_ms(lambda: F.conv2d(x, w, padding=1, groups=2).sum().backward())
        else:
            pairs = [(_tensor(n, cin, size, size), _tensor(cout, cin, 3, 3)) for _ in range(2)]
            total += _median_ms(lambda: [F.conv2d(x, w, padding=1).sum().backward()
                                         for x, w in pairs])
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timesteps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    shapes, n = conv_shapes(args.width), args.batch * args.timesteps
    print(f"layers (in, out, size): {shapes}, N = {n}")
    for _ in range(args.rounds):
        two, one = cohort_ms(shapes, n, grouped=False), cohort_ms(shapes, n, grouped=True)
        print(f"two convolutions {two:.0f} ms, one grouped convolution {one:.0f} ms")


if __name__ == "__main__":
    main()
