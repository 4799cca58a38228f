"""Training-step throughput and peak memory of the spiking CIFARNet: twinsnn as its trainer
runs it, ablations of it, and peer libraries carrying the same weights, every one stepped by
the library's ``twinsnn.cohort.train_step``.

    python -m benchmarks.train_step [--device cpu|cuda] [--config fmnist-cpu] [--image 3x32x32]
        [--widths 0.125 0.25] [--batches 64] [--modes single tna] [--impls twinsnn ...]
        [--warmup 2] [--steps 4] [--rounds 2] [--malloc retain|default]
        [--out runs/benchmarks.json] [--label main]

A point is a (width, batch size, mode, implementation). Its cohort is what the trainer
builds (``twinsnn.train.build_trainer``) from ``--config`` with the point's width, batch size
and strategy (mode ``single`` or ``tna``), for random images of ``--image`` (channels x
height x width) in 10 classes. An implementation (``IMPLS``) changes what is timed: config
values (the ``twinsnn:*`` ablations each undo one optimization; ``twinsnn:cuda-graphs*`` add
one that is off by default), the LIF kernel, the step, or
a peer library's networks carrying the cohort's weights (``benchmarks/peers.py``). A device
(``DEVICES``) times a step and measures its memory.

Each point runs in a fresh subprocess: a first step on 2 samples loads and compiles every
code path, then the memory baseline, ``--warmup`` untimed steps and ``--steps`` timed ones.
Rounds interleave the points, so that a slow stretch of the machine hits all of them. The
rows, the machine, the versions, the git commit and the command go into the ``--label``
entry of the JSON file ``--out`` (other labels there are kept). That the peers compute the
same function as twinsnn is tested in ``tests/test_peers.py``.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from twinsnn.analysis import dense_macs
from twinsnn.cohort import Cohort, optimization
from twinsnn.config import ModelConfig, load_config
from twinsnn.data import DataSplits, Dataset
from twinsnn.models import build_model, cifarnet
from twinsnn.neurons import set_kernel
from twinsnn.run import code_version, cpu_info
from twinsnn.runtime import configure, retain_freed_memory
from twinsnn.graphs import GraphedStep, WARMUP_STEPS
from twinsnn.structure import layers, readout, shapes
from twinsnn.train import Parts, build_trainer

CLASSES = 10
MODES = ("single", "tna")
M_ARENA_MAX = -8  # glibc mallopt parameter: the most malloc arenas


@dataclasses.dataclass(frozen=True)
class Impl:
    """How an implementation differs from twinsnn as its trainer runs it."""

    overrides: dict = dataclasses.field(default_factory=dict)  # config values
    kernel: str | None = None  # the LIF kernel instead of the config's (twinsnn.neurons.KERNELS)
    peer: str | None = None  # a peer's networks with the cohort's weights (peers.PEERS)
    threaded: bool = False  # every member on its own thread (threaded_step)


IMPLS = {
    "twinsnn": Impl(),
    "twinsnn:eager-lif": Impl({"train.compile": False}),
    "twinsnn:unfused-norm": Impl({"train.fuse_norm": False}),  # BatchNorm, then the LIF
    "twinsnn:autograd-lif": Impl(kernel="reference"),
    "twinsnn:nchw": Impl({"train.channels_last": False}),
    "twinsnn:bf16": Impl({"train.precision": "bf16"}),  # the forward under bf16 autocast
    # CUDA only (elsewhere the same as twinsnn): the step replayed from a CUDA graph
    "twinsnn:cuda-graphs": Impl({"train.cuda_graphs": True}),
    "twinsnn:cuda-graphs-bf16": Impl({"train.cuda_graphs": True, "train.precision": "bf16"}),
    # TNA only: each member's forward, backward and Adam on its own thread (1 intra-op thread)
    "twinsnn:threaded-cohort": Impl(threaded=True),
    "spikingjelly": Impl({"train.channels_last": False}, peer="spikingjelly"),
    # its built-in ATan surrogate: its own LIF kernels instead of the autograd reference
    "spikingjelly:native": Impl({"train.channels_last": False}, peer="spikingjelly:native"),
    "snntorch": Impl({"train.channels_last": False}, peer="snntorch"),
}
DEFAULT_IMPLS = ("twinsnn", "spikingjelly", "spikingjelly:native", "snntorch")


# ----------------------------------------------------------------------------- devices

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# environment variables that hold oneDNN, MKL and ATen below the CPU's own vector ISA
class Cpu:
    """Wall time of a step; peak resident memory of the process (VmHWM, reset through
    /proc/self/clear_refs) above its resident memory at the baseline; dense fp32 GEMM rate as
    the reference for the FLOP rate."""

    def synchronize(self) -> None:
        pass

    def reset_peak(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base_kib = _status_kib("VmRSS")

    def peak_mib(self) -> float:
        return (_status_kib("VmHWM") - self.base_kib) / 1024

    def describe(self) -> dict:
        """The CPU (``twinsnn.run.cpu_info``) with thread and core counts."""
        return {**cpu_info(), "logical_cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads()}

    def matmul_gflops(self, n: int = 2048, reps: int = 10, trials: int = 5) -> dict:
        """Dense fp32 GEMM throughput (GFLOP/s, median over ``trials``) of the two libraries
        torch runs on CPU: MKL (``torch.mm``) and oneDNN (the same product as a 1x1
        convolution in NHWC, the library twinsnn's convolutions run in)."""
        a, b = torch.randn(n, n), torch.randn(n, n)
        image = a.t().reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)
        kernel = b.t().reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
        gemms = {"mkl": lambda: torch.mm(a, b), "onednn": lambda: F.conv2d(image, kernel)}
        rates = {}
        for name, gemm in gemms.items():
            for _ in range(3):
                gemm()
            trial_rates = []
            for _ in range(trials):
                start = time.perf_counter()
                for _ in range(reps):
                    gemm()
                trial_rates.append(2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
            rates[name] = statistics.median(trial_rates)
        return rates


class Cuda:
    """Wall time of a step between ``torch.cuda.synchronize`` calls; peak allocated memory
    (``max_memory_allocated`` above the allocation at the baseline); dense GEMM rates in fp32
    and bf16 as the reference for the FLOP rate."""

    def __init__(self):
        if not torch.cuda.is_available():
            print("benchmarks.train_step: --device cuda needs a GPU and a CUDA build of torch "
                  "(torch.cuda.is_available() is False)", file=sys.stderr)
            sys.exit(2)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def reset_peak(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base_bytes = torch.cuda.memory_allocated()

    def peak_mib(self) -> float:
        return (torch.cuda.max_memory_allocated() - self.base_bytes) / 2**20

    def describe(self) -> dict:
        return {**Cpu().describe(), "gpu": torch.cuda.get_device_name(),
                "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                "cuda": torch.version.cuda}

    def matmul_gflops(self, n: int = 8192, reps: int = 20, trials: int = 5) -> dict:
        """Dense GEMM throughput (GFLOP/s, median over ``trials``) in fp32 (TF32 as the
        session allows it) and bf16."""
        rates = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
            for _ in range(3):
                a @ b
            trial_rates = []
            for _ in range(trials):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                for _ in range(reps):
                    a @ b
                end.record()
                end.synchronize()
                trial_rates.append(2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e9)
            rates[str(dtype).removeprefix("torch.")] = statistics.median(trial_rates)
        return rates


DEVICES = {"cpu": Cpu, "cuda": Cuda}


# ----------------------------------------------------------------------------- one point

def random_data(batch: int, image: tuple[int, int, int], seed: int = 1) -> DataSplits:
    """A batch of random normalized images and labels, shaped as the trainer's data."""
    g = torch.Generator().manual_seed(seed)
    train = Dataset(torch.randn(batch, *image, generator=g),
                    torch.randint(0, CLASSES, (batch,), generator=g))
    none = Dataset(train.x[:0], train.y[:0])
    channels = image[0]
    return DataSplits("random", train, none, none, CLASSES, (0.0,) * channels,
                      (1.0,) * channels, "crop_flip", {})


def point_config(args, width: float, batch: int, mode: str, impl: Impl):
    return load_config(args.config, {"model.width": width, "model.timesteps": args.timesteps,
                                     "train.batch_size": batch, "loss.strategy": mode,
                                     "train.device": args.device, **impl.overrides})


def build_step(cfg, impl: Impl, data: DataSplits):
    """The cohort of ``cfg`` changed as ``impl`` says: ``(step, first, graphed)``, a training
    step on ``data``'s batch, one on its first 2 samples (eager), and whether the step is
    replayed from a CUDA graph."""
    device, _ = configure(cfg.train)
    factory = functools.partial(build_model, cfg.model, data.num_classes, data.in_channels,
                                data.image_size)
    t = build_trainer(cfg, Parts(factory))
    if impl.kernel:
        for member in t.cohort.members:
            set_kernel(member, impl.kernel)
    if impl.peer:  # the same trainer, its members the peer's networks with their weights
        from .peers import PEERS

        peers = iter([PEERS[impl.peer](m) for m in t.cohort.members])
        t = build_trainer(cfg, Parts(lambda: next(peers)))
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    x, y = data.train.x.to(device).contiguous(memory_format=fmt), data.train.y.to(device)
    first = lambda: t.step(x[:2], y[:2])  # noqa: E731
    if impl.threaded:
        return threaded_step(t.cohort, t.strategy, cfg.train, x, y), first, False
    return (lambda: t.step(x, y)), first, isinstance(t.step, GraphedStep)


def threaded_step(cohort: Cohort, strategy, train_cfg, x, y):
    """A step with every member on its own thread running one intra-op thread: the forwards
    run concurrently, the strategy's loss gradient w.r.t. each member's potentials is computed
    once, then each thread runs its member's backward and its own Adam. glibc gets one malloc
    arena, so the threads reuse the freed memory of ``retain_freed_memory`` (per-thread arenas
    map and zero-fill every large block anew)."""
    ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
    optimizers = [optimization([m], train_cfg)[0] for m in cohort.members]
    pool = ThreadPoolExecutor(len(cohort.members), initializer=torch.set_num_threads,
                              initargs=(1,))

    def backward(i, out, grad):
        out.backward(grad)
        optimizers[i].step()

    def step():
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        outputs = list(pool.map(lambda m: m(x), cohort.members))
        leaves = [out.detach().requires_grad_() for out in outputs]
        strategy.loss(leaves, y)[0].backward()
        list(pool.map(backward, range(len(outputs)), outputs, [leaf.grad for leaf in leaves]))

    return step


def time_point(args, width: float, batch: int, mode: str, impl_name: str) -> dict:
    """Time ``args.steps`` training steps of one point in this (fresh) process."""
    if args.malloc == "retain":
        retain_freed_memory()
    device = DEVICES[args.device]()
    impl = IMPLS[impl_name]
    cfg = point_config(args, width, batch, mode, impl)
    step, first, graphed = build_step(cfg, impl, random_data(batch, args.image))
    # a first step on 2 samples loads and compiles every code path (torch.compile kernels,
    # oneDNN primitives) before the memory baseline, so that it measures training alone
    first()
    device.synchronize()
    device.reset_peak()
    for _ in range(args.warmup + (WARMUP_STEPS + 1 if graphed else 0)):  # + capture
        step()
    times = []
    for _ in range(args.steps):
        device.synchronize()
        start = time.perf_counter()
        step()
        device.synchronize()
        times.append(time.perf_counter() - start)
    return {"step_s": times, "peak_mib": device.peak_mib()}


def train_flops(width: float, timesteps: int, image: tuple[int, int, int]) -> float:
    """Multiply-add FLOPs of one training step per sample, from the layer shapes.

    Forward: the first conv once (static image), every other conv and linear layer T times.
    Backward: twice the forward (input and weight gradients), except the first conv, which
    needs only its weight gradient. BatchNorm, LIF, pooling and the optimizer are not counted.
    """
    model = cifarnet(ModelConfig(width=width, timesteps=timesteps), CLASSES, image[0], image[1:])
    sizes, forward, backward = shapes(model, image), 0.0, 0.0
    for node in layers(model) + [readout(model)]:
        synapse = node.module.synapse if node.kind == "layer" else node.module
        flops = 2.0 * dense_macs(synapse, sizes[f"{node.name}.synapse" if node.kind == "layer"
                                              else node.name])
        first = node.inputs[0] == "input"
        forward += flops if first else flops * timesteps
        backward += flops if first else 2 * flops * timesteps
    return forward + backward


# ----------------------------------------------------------------------------- report

def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("twinsnn", "spikingjelly", "snntorch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def summarize(records: list[dict], peak_gflops: float) -> list[dict]:
    rows = []
    for rec in records:
        rates = sorted(rec["batch"] / t for t in rec["step_s"])
        rate = statistics.median(rates)
        gflops = rate * rec["flops_per_sample"] / 1e9
        rows.append({**{k: rec[k] for k in ("width", "batch", "mode", "impl")},
                     "samples_s": rate, "samples_s_min": rates[0], "samples_s_max": rates[-1],
                     "step_ms": 1000 * rec["batch"] / rate, "steps_timed": len(rates),
                     "peak_mib": statistics.median(rec["peak_mib"]), "gflops": gflops,
                     "matmul_share": gflops / peak_gflops})
    return rows


def ratios(rows: list[dict]) -> dict:
    """twinsnn against every other implementation, and TNA against single, per width and
    batch."""
    get = {(r["width"], r["batch"], r["mode"], r["impl"]): r for r in rows}
    out = {}
    for (width, batch, mode, impl), r in get.items():
        ours = get.get((width, batch, mode, "twinsnn"))
        key = f"{width}/{batch}/{mode}"
        if ours and impl != "twinsnn":
            out[f"{key}/speed_vs_{impl}"] = ours["samples_s"] / r["samples_s"]
            out[f"{key}/memory_vs_{impl}"] = ours["peak_mib"] / r["peak_mib"]
        single = get.get((width, batch, "single", impl))
        if mode == "tna" and single:
            out[f"{width}/{batch}/tna_step_cost/{impl}"] = single["samples_s"] / r["samples_s"]
    return out


def table(rows: list[dict], ratio: dict) -> str:
    lines = ["| width | batch | mode | implementation | samples/s median [min, max] | step ms "
             "| peak MiB | GFLOP/s | share of matmul | twinsnn speed / this "
             "| twinsnn memory / this |", "|---" * 11 + "|"]
    for r in rows:
        key = f"{r['width']}/{r['batch']}/{r['mode']}"
        speed, memory = (ratio.get(f"{key}/{what}_vs_{r['impl']}") for what in ("speed", "memory"))
        lines.append(
            f"| {r['width']} | {r['batch']} | {r['mode']} | {r['impl']} | {r['samples_s']:.1f} "
            f"[{r['samples_s_min']:.1f}, {r['samples_s_max']:.1f}] | {r['step_ms']:.0f} "
            f"| {r['peak_mib']:.0f} | {r['gflops']:.0f} | {100 * r['matmul_share']:.0f}% "
            f"| {'' if speed is None else f'{speed:.2f}x'} "
            f"| {'' if memory is None else f'{memory:.2f}x'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(DEVICES), default="cpu")
    p.add_argument("--config", default="fmnist-cpu",
                   help="preset or YAML file the cohort is built from (default: fmnist-cpu)")
    p.add_argument("--image", default="3x32x32", type=lambda s: tuple(map(int, s.split("x"))),
                   help="input channels x height x width (default: 3x32x32)")
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25])
    p.add_argument("--batches", type=int, nargs="+", default=[64])
    p.add_argument("--timesteps", type=int, default=5)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(DEFAULT_IMPLS),
                   help="twinsnn:* are ablations of twinsnn, each without one optimization; "
                        "twinsnn:cuda-graphs* add train.cuda_graphs (CUDA only)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--malloc", choices=("default", "retain"), default="retain",
                   help="glibc malloc as is, or keeping freed memory (retain_freed_memory), "
                        "as twinsnn train sets it; applies to every implementation alike")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks.json"))
    p.add_argument("--label", default="main", help="key of this run in the --out file")
    p.add_argument("--point", help=argparse.SUPPRESS)  # a worker: time one point
    return p.parse_args(argv)


def _run_point(argv: list[str], point: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_step", *argv, "--point", json.dumps(point)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"point {point} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.point:
        print(json.dumps(time_point(args, **json.loads(args.point))))
        return
    device = DEVICES[args.device]()
    info = {**device.describe(), "platform": platform.platform(), "versions": versions(),
            "code": code_version(), "command": "python -m benchmarks.train_step " +
            " ".join(argv), "loadavg_start": os.getloadavg()}
    print(f"{info.get('gpu', info['cpu'])}, {info['logical_cpus']} logical CPUs, torch threads "
          f"{info['torch_threads']}, ISA limits {info.get('isa_limits') or 'none'}, "
          f"load {info['loadavg_start'][0]:.2f}; "
          f"commit {info['code']['commit']}", flush=True)
    gflops = [device.matmul_gflops()]
    points = [dict(width=w, batch=b, mode=m, impl_name=i) for w in args.widths
              for b in args.batches for m in args.modes for i in args.impls
              if m == "tna" or not IMPLS[i].threaded]
    records = [{"width": p["width"], "batch": p["batch"], "mode": p["mode"],
                "impl": p["impl_name"], "step_s": [], "peak_mib": [],
                "flops_per_sample": train_flops(p["width"], args.timesteps, args.image)
                * (2 if p["mode"] == "tna" else 1)} for p in points]
    for round_ in range(args.rounds):
        for point, record in zip(points, records):
            result = _run_point(argv, point)
            record["step_s"] += result["step_s"]
            record["peak_mib"].append(result["peak_mib"])
            print(f"round {round_ + 1}: " + " ".join(f"{v}" for v in point.values()) +
                  f": {statistics.median(point['batch'] / t for t in result['step_s']):.1f} "
                  f"samples/s, {result['peak_mib']:.0f} MiB", flush=True)
    gflops.append(device.matmul_gflops())
    # the faster library's rate, the median of the measurements before and after
    peak = max(statistics.median(g[name] for g in gflops) for name in gflops[0])
    info.update(matmul_gflops=gflops, matmul_reference_gflops=peak,
                loadavg_end=os.getloadavg())
    rows = summarize(records, peak)
    ratio = ratios(rows)
    print("\n" + table(rows, ratio) + "\n")
    for key, value in ratio.items():
        print(f"{key}: {value:.2f}")
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs[args.label] = {"machine": info, "config": args.config, "image": args.image,
                        "timesteps": args.timesteps, "malloc": args.malloc, "results": rows,
                        "ratios": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    print(f"\nwrote {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
