"""Training-step throughput of twinsnn's CIFARNet for a few batch sizes and settings.

    python -m benchmarks.step_throughput --batches 32,64,128 [--eager] [--channels-last]
        [--malloc default|retain]

Random 28x28 single-channel input, width 0.125, T=5, Adam; 3 warm-up steps, then about 1,280
samples timed. Used to pick the CPU presets' batch size and the execution options.
"""
from __future__ import annotations

import argparse
import time

import torch

from twinsnn.models import cifarnet
from twinsnn.neurons import use_compiled_kernels
from twinsnn.runtime import retain_freed_memory


def samples_per_s(batch: int, channels_last: bool, width: float) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = cifarnet(10, 1, width=width, image_size=(28, 28)).to(memory_format=fmt)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    n = max(3, 1280 // batch)
    start = time.perf_counter()
    for _ in range(n):
        step()
    return batch * n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="64")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--eager", action="store_true", help="LIF without torch.compile")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--malloc", choices=("default", "retain"), default="retain",
                   help="glibc malloc as is, or as the trainer sets it (retain_freed_memory)")
    args = p.parse_args()
    if args.malloc == "retain":
        retain_freed_memory()
    use_compiled_kernels(not args.eager)
    for batch in map(int, args.batches.split(",")):
        rate = samples_per_s(batch, args.channels_last, args.width)
        print(f"batch {batch} compiled={not args.eager} channels_last={args.channels_last} "
              f"malloc={args.malloc}: {rate:.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
