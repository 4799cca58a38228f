"""Grids of runs: every combination of the swept values and seeds, one run folder each,
skipped when finished and resumed when interrupted; trained one after another in this
process (``local``) or as tasks of a Ray cluster (``ray``), then summarized alike."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from .choices import check_choices
from .files import first_line, write_text
from .config import Config, coerce, load_config, parse_overrides, resolve_key
from .errors import ConfigError, TwinsnnError, lookup
from .inference import evaluate_file
from .report import best_first, format_summary, load_run, summarize
from .api import fit


def grid(sets: list[str], seeds: list[int]) -> list[dict]:
    """``["alpha=1e-3,1e-4", "lr=0.01"]`` and seeds -> the cartesian product as dicts."""
    axes = {}
    for pair in sets:
        key, sep, values = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r} is not key=value[,value...]")
        full = resolve_key(key.strip())
        axes[full] = [coerce(full, parse_overrides([f"k={v}"])["k"]) for v in values.split(",")]
    axes["train.seed"] = seeds
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def run_name(prefix: str, point: dict) -> str:
    return prefix + "".join(f"-{k.split('.')[-1]}{v}" for k, v in point.items())


def final_test(run_dir: Path) -> None:
    """Evaluate a finished run's model once on the test split into ``test.json`` (read by the
    summaries; never by a choice, which stays on validation)."""
    path = run_dir / "test.json"
    if not path.exists():
        report = evaluate_file(run_dir / "model.safetensors", split="test")
        text = json.dumps({k: report[k] for k in ("split", "samples", "accuracy", "loss")}) + "\n"
        write_text(path, text)


def train_point(cfg: Config, progress: bool = True, cwd: str | None = None) -> None:
    """Train one grid point, resuming its run if a checkpoint exists (``cwd``: the folder the
    sweep's relative paths start from)."""
    if cwd is not None:
        os.chdir(cwd)
    run_dir = Path(cfg.out_dir) / cfg.name
    fit(config=cfg, resume=(run_dir / "checkpoint.pt").exists(), progress=progress)


def run_local(cfgs: list[Config], progress: bool, address: str | None = None) -> None:
    if address is not None:
        raise ConfigError("--address names a Ray cluster; pass it with --executor ray")
    for cfg in cfgs:
        print(f"{cfg.name}: training")
        train_point(cfg, progress)


def run_ray(cfgs: list[Config], progress: bool, address: str | None = None) -> None:
    """Every config a Ray task with one CPU, and one GPU where the cluster has GPUs; joins the
    cluster at ``address`` (default: the one this process is connected to, else a new local
    instance). Run folders are written by the tasks, so on several machines ``out_dir`` must
    be shared storage."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'twinsnn[ray]' "
                          "(or pip install ray)") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(train_point)
        refs = []
        for cfg in cfgs:
            print(f"{cfg.name}: training (Ray task)")
            refs.append(task.remote(cfg, False, os.getcwd()))
        try:
            ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            raise TwinsnnError(str(e.cause) if isinstance(e.cause, TwinsnnError)
                               else f"a Ray task failed: {first_line(e.cause)}") from None
    finally:
        if started:
            ray.shutdown()


EXECUTORS = {"local": run_local, "ray": run_ray}


def sweep(config: str, sets: list[str], seeds: list[int], out_dir: str | None = None,
          progress: bool = True, test: bool = False, executor: str = "local",
          address: str | None = None) -> list[dict]:
    """Train every point of the grid not finished yet with ``executor`` (``EXECUTORS``), then
    write ``<out>/<name>-sweep/summary.{json,md}``, best on validation first; returns its
    rows."""
    run = lookup(EXECUTORS, executor, "--executor")
    base = load_config(config)
    out = out_dir or base.out_dir
    dirs, todo = [], []
    for point in grid(sets, seeds):
        name = run_name(base.name, point)
        cfg = check_choices(load_config(config, {**point, "name": name, "out_dir": out}))
        run_dir = Path(out) / name
        dirs.append(run_dir)
        if (run_dir / "model.safetensors").exists():
            print(f"{name}: finished, skipped")
        else:
            todo.append(cfg)
    run(todo, progress, address)
    if test:
        for run_dir in dirs:
            final_test(run_dir)
    rows = best_first(summarize([load_run(d) for d in dirs]))
    summary_dir = Path(out) / f"{base.name}-sweep"
    summary_dir.mkdir(parents=True, exist_ok=True)
    (summary_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (summary_dir / "summary.md").write_text(format_summary(rows) + "\n")
    print(format_summary(rows))
    print(f"best on validation: {rows[0]['config']}" if rows else "no finished runs")
    return rows
