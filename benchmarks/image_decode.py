"""How long an image folder takes to load: decoded from its archive into a fresh cache, then
read back from that cache, as ``twinsnn.data.build_data`` does it (one thread).

    python -m benchmarks.image_decode --data-dir ../shared/data [--name cifar10-jpeg]
        [--repeats 3] [--out docs/runs/cifar10/decode.json]

Prints and writes (``--out``) the seconds of each load with the machine's kind and load
average (the 2-core machines are shared, so wall time depends on what else runs).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from twinsnn.config import DataConfig
from twinsnn.data import build_data
from twinsnn.files import write_text
from twinsnn.run import code_version, machine_info


def timed_load(cfg: DataConfig) -> dict:
    wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    splits = build_data(cfg, 2)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
            "images": len(splits.train) + len(splits.val) + len(splits.test),
            "load_average_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--name", default="cifar10-jpeg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            cfg = DataConfig(name=args.name, dir=args.data_dir, cache_dir=cache_dir)
            rows.append({"decoded": timed_load(cfg), "from_cache": timed_load(cfg)})
            print(json.dumps(rows[-1]))
    record = {"data": args.name, "runs": rows, "machine": machine_info(torch.device("cpu")),
              "code": code_version(),
              "torch": torch.__version__}
    if args.out:
        write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
