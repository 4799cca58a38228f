"""Interleaved A/B of the main job's TNA training step between two source trees.

Each tree (a ``git archive`` of a commit) gets one worker process that builds the step as its
own ``benchmarks/train_step.py`` does (``build_step``: fmnist-cpu-fast-tna-tsnn, width 0.125,
T = 2, batch 64 of random images, ``loss.alpha`` 1e-5 set explicitly) and then waits. The
parent lets the workers run ``--steps`` timed steps in turn, in the order ABBA BAAB ... so that
a drift of the machine's speed falls on both alike, for ``--turns`` turns each, and prints one
JSON line per turn (side, turn, the median step of the turn in ms) and a summary: each side's
median over turns and the paired ratio after/before (geometric mean over the turns' pairs)
with its 95% Student-t interval (``twinsnn.report.t_interval`` of the log ratios).

With ``--epochs`` a turn is whole epochs through ``twinsnn.fit`` (the main job's loop: 40 steps
of 64 real Fashion-MNIST images, ``epoch_time_s`` / 40 as the step).

    python interleaved.py BEFORE_TREE AFTER_TREE [--turns 24] [--steps 8] [--epochs] > out.jsonl
"""
import argparse
import json
import math
import statistics
import subprocess
import sys

from twinsnn.report import t_interval

STEP = r"""
import json, sys, time
import torch
from benchmarks.train_step import IMPLS, build_step, random_data
from twinsnn.config import load_config
from twinsnn.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    retain_freed_memory()
cfg = load_config("fmnist-cpu-fast-tna-tsnn", {"model.width": 0.125, "model.timesteps": 2,
    "train.batch_size": 64, "loss.strategy": "tna", "loss.alpha": 1e-5,
    "loss.alpha_compressed": None, "train.device": "cpu"})
step, first, _ = build_step(cfg, IMPLS["twinsnn"], random_data(64, (1, 28, 28)))
first()
for _ in range(3):
    step()
print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)
"""

EPOCH = r"""
import contextlib, json, sys, tempfile
import twinsnn
from twinsnn.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    retain_freed_memory()
print(json.dumps({"threads": __import__("torch").get_num_threads()}), flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
            run = twinsnn.fit(config="fmnist-cpu-fast-tna-tsnn", out_dir=folder, name="ab",
                              epochs=1, train_limit=2560, val_size=100, alpha=1e-5,
                              alpha_compressed=None, progress=False)
        times.append(run.record["epoch_time_s"] / 40)
    print(json.dumps(times), flush=True)
"""



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--turns", type=int, default=24)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="glibc malloc keeping freed memory, as `twinsnn train` runs "
                        "(runtime.retain_freed_memory), or as is, as twinsnn.fit alone runs")
    p.add_argument("--epochs", action="store_true",
                   help="time whole epochs instead: twinsnn.fit, 1 epoch of the first 2,560 real "
                        "training images (40 steps), the epoch's time per step; --steps epochs a turn")
    args = p.parse_args()
    workers = {}
    for side, tree in (("before", args.before), ("after", args.after)):
        workers[side] = subprocess.Popen([sys.executable, "-c", EPOCH if args.epochs else STEP, args.malloc], cwd=tree, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env={"PYTHONPATH": f"{tree}/src:{tree}",
                                              "PATH": "/usr/bin:/bin"})
        print(json.dumps({"side": side, "tree": tree, **json.loads(workers[side].stdout.readline())}))
    medians = {"before": [], "after": []}
    for turn in range(args.turns):
        order = ("before", "after") if turn % 4 in (0, 3) else ("after", "before")
        for side in order:
            w = workers[side]
            w.stdin.write(f"{args.steps}\n")
            w.stdin.flush()
            ms = 1000 * statistics.median(json.loads(w.stdout.readline()))
            medians[side].append(ms)
            print(json.dumps({"side": side, "turn": turn, "median_step_ms": round(ms, 2)}),
                  flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    ci = t_interval([math.log(a / b) for a, b in zip(medians["after"], medians["before"])])
    print(json.dumps({"summary": True, "turns": args.turns, "steps_per_turn": args.steps, "epochs": args.epochs, "malloc": args.malloc,
                      "before_median_ms": round(statistics.median(medians["before"]), 2),
                      "after_median_ms": round(statistics.median(medians["after"]), 2),
                      "after_over_before": round(math.exp(ci["mean"]), 4),
                      "ci95": [round(math.exp(ci["ci_low"]), 4),
                               round(math.exp(ci["ci_high"]), 4)]}))


if __name__ == "__main__":
    main()
