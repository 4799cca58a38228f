"""Grids of runs: every combination of the swept values and seeds, one run folder each,
skipped when finished and resumed when interrupted."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from .checkpoint import atomic_write
from .config import coerce, load_config, parse_overrides, resolve_key
from .errors import ConfigError
from .evaluate import evaluate_file
from .report import best_first, format_summary, load_run, summarize
from .train import fit


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
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sweep(config: str, sets: list[str], seeds: list[int], out_dir: str | None = None,
          progress: bool = True, test: bool = False) -> list[dict]:
    base = load_config(config)
    out = out_dir or base.out_dir
    dirs = []
    for point in grid(sets, seeds):
        name = run_name(base.name, point)
        cfg = load_config(config, {**point, "name": name, "out_dir": out})
        run_dir = Path(out) / name
        dirs.append(run_dir)
        if (run_dir / "model.safetensors").exists():
            print(f"{name}: finished, skipped")
            continue
        print(f"{name}: training")
        fit(cfg, resume=(run_dir / "checkpoint.pt").exists(), progress=progress)
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
