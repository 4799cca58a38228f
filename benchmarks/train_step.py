"""Training-step throughput and peak memory of the spiking CIFARNet in twinsnn, SpikingJelly
and snnTorch, with identical weights, side by side.

    python -m benchmarks.train_step [--widths 0.125 0.25] [--batch 64] [--rounds 2] ...

Each (width, mode, implementation) runs in a fresh subprocess: build the network(s), take
``--warmup`` untimed training steps (forward, backward, Adam), then ``--steps`` timed ones.
Rounds interleave the configurations so that a slow stretch of the machine hits all of them.
Peak memory is the peak resident set (VmHWM) of that subprocess during the warm-up and timed
steps, above its resident set once the models, optimizer and input exist and a first
forward/backward on 2 samples has loaded every code path (the peak is reset there through
/proc/self/clear_refs); it includes activations, gradients, Adam's state and workspaces.
Before timing, a separate subprocess checks that the three implementations compute the same
logits (and, where the model is the same, the same gradients) from the same weights.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
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

from twinsnn.runtime import retain_freed_memory

PEER_IMPLS = ("spikingjelly", "snntorch")
# twinsnn as its trainer runs it, ablations that each undo one optimization, and variants
TWINSNN = {
    "twinsnn": {"lif": "compiled", "channels_last": True},
    "twinsnn:eager-lif": {"lif": "eager", "channels_last": True},
    "twinsnn:autograd-lif": {"lif": "autograd", "channels_last": True},
    "twinsnn:nchw": {"lif": "compiled", "channels_last": False},
    # the forward under bf16 autocast (train.precision=bf16)
    "twinsnn:bf16": {"lif": "compiled", "channels_last": True, "bf16": True},
    # TNA only: each member's forward, backward and Adam on its own thread (1 intra-op thread)
    "twinsnn:threaded-cohort": {"lif": "compiled", "channels_last": True, "threads": True},
}
IMPLS = ("twinsnn", *PEER_IMPLS)
M_ARENA_MAX = -8  # glibc mallopt parameter: the most malloc arenas
MODES = ("single", "tna")
IMAGE = (3, 32, 32)
CLASSES = 10


# ----------------------------------------------------------------------------- models

def reference_models(width: float, timesteps: int, members: int, seed: int = 0):
    """``members`` independently initialized twinsnn CIFARNets (base first)."""
    from twinsnn.models import cifarnet

    models = []
    for i in range(members):
        torch.manual_seed(seed + i)
        models.append(cifarnet(num_classes=CLASSES, in_channels=IMAGE[0], width=width,
                               timesteps=timesteps))
    return models


def build(impl: str, width: float, timesteps: int, members: int):
    """The networks of ``impl`` carrying the weights of ``reference_models``, and the memory
    format their input takes."""
    models = reference_models(width, timesteps, members)
    if impl in PEER_IMPLS:
        from .peers import PEERS

        return [PEERS[impl](m) for m in models], torch.contiguous_format
    import twinsnn.neurons

    variant = TWINSNN[impl]
    twinsnn.neurons.use_compiled_kernels(variant["lif"] == "compiled")
    if variant["lif"] == "autograd":
        twinsnn.neurons.lif = autograd_lif  # what ``LIF.forward`` calls
    if not variant["channels_last"]:
        return models, torch.contiguous_format
    return [m.to(memory_format=torch.channels_last) for m in models], torch.channels_last


def autograd_lif(current_tb, decay: float = 0.5, threshold: float = 1.0):
    """Eq. 1 as a plain per-step loop of autograd ops (the baseline the fused LIF replaces)."""
    from .peers import Boxcar

    spikes, v = [], None
    for current in current_tb:
        u = current if v is None else current + decay * v
        s = Boxcar.apply(u - threshold)
        spikes.append(s)
        v = u * (1.0 - s)
    return torch.stack(spikes)


def threaded_cohort_step(models, x, y, alpha: float):
    """A TNA step with every member on its own thread running one intra-op thread: the
    forwards run concurrently, the loss gradient w.r.t. each member's logits is computed once,
    then each thread runs its member's backward and its own Adam. glibc gets one malloc arena,
    so the threads reuse the freed memory of ``retain_freed_memory`` (per-thread arenas map
    and zero-fill every large block anew)."""
    ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    pool = ThreadPoolExecutor(len(models), initializer=torch.set_num_threads, initargs=(1,))

    def backward(i, logits, grad):
        logits.backward(grad)
        optimizers[i].step()

    def step():
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        logits = list(pool.map(lambda m: m(x), models))
        leaves = [out.detach().requires_grad_() for out in logits]
        cohort_loss(leaves, y, alpha).backward()
        list(pool.map(backward, range(len(models)), logits, [leaf.grad for leaf in leaves]))

    return step


def cohort_loss(logits, y, alpha: float):
    """CE of every member plus alpha * MSE between base and twin logits (TNA)."""
    loss = sum(F.cross_entropy(out, y) for out in logits)
    if len(logits) > 1:
        loss = loss + alpha * F.mse_loss(logits[0], logits[1])
    return loss


def batch(size: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, *IMAGE, generator=g), torch.randint(0, CLASSES, (size,), generator=g)


def train_flops(width: float, timesteps: int) -> float:
    """Multiply-add FLOPs of one training step per sample, from the layer shapes.

    Forward: the first conv once (static image), every other conv and linear layer T times.
    Backward: twice the forward (input and weight gradients), except the first conv, which
    needs only its weight gradient. BatchNorm, LIF, pooling and the optimizer are not counted.
    """
    (model,) = reference_models(width, timesteps, 1)
    size, first, forward, backward = IMAGE[1], True, 0.0, 0.0
    for block in model.convs:
        conv = block.synapse
        flops = 2.0 * conv.in_channels * conv.out_channels * 9 * size * size
        forward += flops if first else flops * timesteps
        backward += flops if first else 2 * flops * timesteps
        first = False
        if not isinstance(block.pool, torch.nn.Identity):
            size //= 2
    for linear in [b.synapse for b in model.fcs] + [model.out]:
        flops = 2.0 * linear.in_features * linear.out_features * timesteps
        forward += flops
        backward += 2 * flops
    return forward + backward


def matmul_gflops(n: int = 2048, reps: int = 10, trials: int = 5) -> dict:
    """Dense fp32 GEMM throughput (GFLOP/s, median over ``trials``) of the two libraries
    torch runs on CPU: MKL (``torch.mm``) and oneDNN (the same product as a 1x1 convolution
    in NHWC, the library twinsnn's convolutions run in). They differ by 2x on some CPUs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    as_image = a.t().reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)
    as_kernel = b.t().reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    gemms = {"mkl": lambda: torch.mm(a, b), "onednn": lambda: F.conv2d(as_image, as_kernel)}
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


# ----------------------------------------------------------------------------- workers

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def time_config(impl: str, width: float, mode: str, batch_size: int, timesteps: int,
                warmup: int, steps: int, alpha: float, malloc: str) -> dict:
    """Time ``steps`` training steps of one configuration in this (fresh) process."""
    if malloc == "retain":
        retain_freed_memory()
    models, memory_format = build(impl, width, timesteps, 2 if mode == "tna" else 1)
    for m in models:
        m.train()
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, y = batch(batch_size)
    x = x.contiguous(memory_format=memory_format)
    variant = TWINSNN.get(impl, {})
    bf16 = variant.get("bf16", False)

    def logits(inputs):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return [m(inputs) for m in models]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = cohort_loss(logits(x), y, alpha)
        loss.backward()
        optimizer.step()

    if mode == "tna" and variant.get("threads"):
        step = threaded_cohort_step(models, x, y, alpha)

    # a first forward/backward on 2 samples loads and compiles every code path (torch.compile
    # kernels, oneDNN primitives) before the memory baseline, so it measures training alone
    small = x[:2].contiguous(memory_format=memory_format)
    cohort_loss(logits(small), y[:2], alpha).backward()
    optimizer.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base_kib = _status_kib("VmRSS")
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_kib = _status_kib("VmHWM")
    return {"step_s": times, "peak_mib": (peak_kib - base_kib) / 1024}


def check_config(width: float, batch_size: int, timesteps: int) -> dict:
    """Max abs differences of logits (and gradients) of the peers against twinsnn as timed."""
    from twinsnn.layers import TimeSharedDropout

    from .peers import PEERS, aligned_parameters

    x, y = batch(batch_size, seed=2)
    result = {}
    for dtype in (torch.float64, torch.float32):
        tag = str(dtype).removeprefix("torch.")
        (ref,), memory_format = build("twinsnn", width, timesteps, 1)
        ref = ref.to(dtype)
        xd = x.to(dtype).contiguous(memory_format=memory_format)
        calibrate(ref, xd)
        for m in ref.modules():  # dropout off: the train-mode check compares deterministic nets
            if isinstance(m, TimeSharedDropout):
                m.p = 0.0
        peers = {name: cls(ref).to(dtype) for name, cls in PEERS.items()}
        nchw = copy.deepcopy(ref).to(memory_format=torch.contiguous_format)
        ref_eval = ref.eval()(xd)
        ref_train = ref.train()(xd)
        # the same twinsnn net in NCHW: what float rounding alone does to training-mode logits
        result[f"twinsnn_nchw/{tag}"] = {"train_logits": _maxdiff(nchw.train()(x.to(dtype)),
                                                                  ref_train)}
        F.cross_entropy(ref_train, y).backward()
        for name, peer in peers.items():
            row = {"eval_logits": _maxdiff(peer.eval()(xd), ref_eval)}
            out = peer.train()(xd)
            F.cross_entropy(out, y).backward()
            row["train_logits"] = _maxdiff(out, ref_train)
            row["train_grads_rel"] = _rel_grad_diff(aligned_parameters(peer), ref.parameters())
            result[f"{name}/{tag}"] = row
        # BatchNorm on running statistics (peers rebuilt from twinsnn's): isolates the
        # neuron's gradient from snnTorch's per-step batch statistics
        ref.zero_grad()
        peers = {name: cls(ref).to(dtype) for name, cls in PEERS.items()}
        for model in (ref, *peers.values()):
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        F.cross_entropy(ref(xd), y).backward()
        for name, peer in peers.items():
            F.cross_entropy(peer(xd), y).backward()
            result[f"{name}/{tag}"]["frozen_bn_grads_rel"] = _rel_grad_diff(
                aligned_parameters(peer), ref.parameters())
        # snnTorch against SpikingJelly with its reset detached from autograd, as snnTorch's is
        detached = PEERS["spikingjelly"](ref).to(dtype)
        for m in detached.modules():
            if hasattr(m, "detach_reset"):
                m.detach_reset = True
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        F.cross_entropy(detached(xd), y).backward()
        result[f"snntorch/{tag}"]["frozen_bn_grads_rel_vs_detached_reset"] = _rel_grad_diff(
            aligned_parameters(peers["snntorch"]), aligned_parameters(detached))
        result[f"logit_scale/{tag}"] = ref_eval.abs().max().item()
    return result


def calibrate(model, x):
    """Set BatchNorm running statistics to those of one training-mode pass over ``x``, so
    the eval-mode check runs with activity in every layer."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1


def _rel_grad_diff(params, ref_params) -> float:
    """Largest over parameters of max |grad - ref grad| / max |ref grad|."""
    return max(_maxdiff(p.grad, r.grad) / r.grad.abs().max().item()
               for p, r in zip(params, ref_params, strict=True))


def _maxdiff(a, b) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def _run_worker(task: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", json.dumps(task)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report

def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("twinsnn", "spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            versions[pkg] = None
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions}


def summarize(records: list[dict], batch_size: int, peak_gflops: float) -> list[dict]:
    rows = []
    for rec in records:
        rates = sorted(batch_size / t for t in rec["step_s"])
        rate = statistics.median(rates)
        rows.append({"width": rec["width"], "mode": rec["mode"], "impl": rec["impl"],
                     "samples_s": rate, "samples_s_min": rates[0], "samples_s_max": rates[-1],
                     "step_ms": 1000 * batch_size / rate, "steps_timed": len(rates),
                     "peak_mib": statistics.median(rec["peak_mib"]),
                     "gflops": rate * rec["flops_per_sample"] / 1e9,
                     "matmul_share": rate * rec["flops_per_sample"] / 1e9 / peak_gflops})
    return rows


def ratios(rows: list[dict]) -> dict:
    """twinsnn against each peer, and TNA against single, per width."""
    get = {(r["width"], r["mode"], r["impl"]): r for r in rows}
    out = {}
    for (width, mode, impl), r in get.items():
        if impl == "twinsnn":
            continue
        ours = get.get((width, mode, "twinsnn"))
        if ours:
            out[f"{width}/{mode}/speed_vs_{impl}"] = ours["samples_s"] / r["samples_s"]
            out[f"{width}/{mode}/memory_vs_{impl}"] = ours["peak_mib"] / r["peak_mib"]
    for (width, mode, impl), r in get.items():
        single = get.get((width, "single", impl))
        if mode == "tna" and single:
            out[f"{width}/tna_step_cost/{impl}"] = single["samples_s"] / r["samples_s"]
    return out


def table(rows: list[dict], ratio: dict) -> str:
    lines = ["| width | mode | implementation | samples/s median [min, max] | step ms "
             "| peak MiB | GFLOP/s | share of matmul | twinsnn speed / this | twinsnn memory / this |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = ratio.get(f"{r['width']}/{r['mode']}/speed_vs_{r['impl']}")
        memory = ratio.get(f"{r['width']}/{r['mode']}/memory_vs_{r['impl']}")
        lines.append(
            f"| {r['width']} | {r['mode']} | {r['impl']} | {r['samples_s']:.1f} "
            f"[{r['samples_s_min']:.1f}, {r['samples_s_max']:.1f}] "
            f"| {r['step_ms']:.0f} | {r['peak_mib']:.0f} "
            f"| {r['gflops']:.0f} | {100 * r['matmul_share']:.0f}% "
            f"| {'' if speed is None else f'{speed:.2f}x'} "
            f"| {'' if memory is None else f'{memory:.2f}x'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timesteps", type=int, default=5)
    p.add_argument("--impls", nargs="+", choices=[*TWINSNN, *PEER_IMPLS], default=list(IMPLS),
                   help="twinsnn:* are ablations of twinsnn, each without one optimization")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--alpha", type=float, default=1.0, help="TNA logit-matching weight")
    p.add_argument("--no-check", action="store_true", help="skip the forward-agreement check")
    p.add_argument("--malloc", choices=("default", "retain"), default="retain",
                   help="glibc malloc as is, or keeping freed memory (retain_freed_memory); "
                        "applies to every implementation alike")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.json"))
    p.add_argument("--label", default="main", help="key of this run in the --out file; runs "
                   "under other labels there are kept")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        task = json.loads(args.worker)
        kind = task.pop("kind")
        result = time_config(**task) if kind == "time" else check_config(**task)
        print(json.dumps(result))
        return

    info = machine()
    info["loadavg_start"] = os.getloadavg()
    info["command"] = "python -m benchmarks.train_step " + " ".join((argv or sys.argv[1:]))
    print(f"{info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads "
          f"{info['torch_threads']}, load {info['loadavg_start'][0]:.2f}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)

    checks = {}
    if not args.no_check and set(args.impls) & set(PEER_IMPLS):
        for width in args.widths:
            checks[str(width)] = _run_worker({"kind": "check", "width": width, "batch_size": 16,
                                              "timesteps": args.timesteps})
            print(f"agreement, width {width}: {json.dumps(checks[str(width)])}", flush=True)

    gflops = [matmul_gflops()]
    print("dense fp32 matmul: " + ", ".join(f"{k} {v:.0f}" for k, v in gflops[0].items())
          + " GFLOP/s", flush=True)
    configs = [(w, m, i) for w in args.widths for m in args.modes for i in args.impls]
    records = {c: {"width": c[0], "mode": c[1], "impl": c[2], "step_s": [], "peak_mib": [],
                   "flops_per_sample": train_flops(c[0], args.timesteps) * (2 if c[1] == "tna"
                                                                              else 1)}
               for c in configs}
    for round_ in range(args.rounds):
        for c in configs:
            res = _run_worker({"kind": "time", "impl": c[2], "width": c[0], "mode": c[1],
                               "batch_size": args.batch, "timesteps": args.timesteps,
                               "warmup": args.warmup, "steps": args.steps,
                               "alpha": args.alpha, "malloc": args.malloc})
            records[c]["step_s"] += res["step_s"]
            records[c]["peak_mib"].append(res["peak_mib"])
            print(f"round {round_ + 1}: width {c[0]} {c[1]:6s} {c[2]:12s} "
                  f"{statistics.median(args.batch / t for t in res['step_s']):7.1f} samples/s "
                  f"{res['peak_mib']:7.0f} MiB", flush=True)
    gflops.append(matmul_gflops())
    # the faster library's rate, the median of the measurements before and after
    peak = max(statistics.median(g[name] for g in gflops) for name in gflops[0])
    info["matmul_gflops"] = gflops
    info["matmul_reference_gflops"] = peak
    info["loadavg_end"] = os.getloadavg()
    rows = summarize(list(records.values()), args.batch, peak)
    ratio = ratios(rows)
    print()
    print(table(rows, ratio))
    print()
    for key, value in ratio.items():
        print(f"{key}: {value:.2f}")
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs[args.label] = {"machine": info, "batch": args.batch, "timesteps": args.timesteps,
                        "malloc": args.malloc, "checks": checks, "results": rows,
                        "ratios": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    print(f"\nwrote {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
