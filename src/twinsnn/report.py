"""Reading finished runs back: summary tables across runs and seeds, and training curves."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .errors import TwinsnnError

IGNORED_KEYS = ("name", "out_dir")


def load_run(run_dir: Path) -> dict:
    """``{"dir", "config" (flat), "metrics" (list of epoch records)}`` of one run folder."""
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "run.json").read_text())
        metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    except FileNotFoundError as e:
        raise TwinsnnError(f"{run_dir} is not a run folder ({Path(e.filename).name} missing)") from None
    except json.JSONDecodeError as e:
        raise TwinsnnError(f"{run_dir}: unreadable run files ({e})") from None
    flat = {}
    for section, value in info["config"].items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            flat[section] = value
    test_file = run_dir / "test.json"
    test = json.loads(test_file.read_text()) if test_file.exists() else {}
    return {"dir": str(run_dir), "config": flat, "metrics": metrics, "info": info, "test": test}


def differing_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values differ between ``runs`` (run name and folder excluded)."""
    keys = sorted({k for r in runs for k in r["config"]} - set(IGNORED_KEYS))
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def label(run: dict, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={run['config'].get(k)}" for k in keys) or Path(run["dir"]).name


def final_accuracy(run: dict, split: str) -> float | None:
    """The base's accuracy on ``split`` after the last epoch: from ``metrics.jsonl``, or for
    the test split from ``test.json`` (``twinsnn sweep --test``); None if neither has it."""
    last = run["metrics"][-1].get(f"{split}_acc/0")
    return run["test"].get("accuracy") if last is None and split == "test" else last


def summarize(runs: list[dict], by_seed: str = "train.seed") -> list[dict]:
    """One row per config (seeds pooled): final val (and test) accuracy of the base, mean,
    std and per seed, sorted by mean validation accuracy (best first). When only seeds differ,
    the one row is named after the run folder without its ``-seed<N>`` suffix."""
    keys = [k for k in differing_keys(runs) if k != by_seed]
    groups: dict[str, list[dict]] = {}
    for run in (r for r in runs if r["metrics"]):
        seedless = Path(run["dir"]).name.removesuffix(f"-seed{run['config'].get(by_seed)}")
        groups.setdefault(label(run, keys) if keys else seedless, []).append(run)
    rows = []
    for name, members in groups.items():
        row = {"config": name, "seeds": [r["config"].get(by_seed) for r in members]}
        for split in ("val", "test"):
            accs = [final_accuracy(r, split) for r in members]
            if all(a is not None for a in accs):
                row[f"{split}_mean"] = statistics.fmean(accs)
                row[f"{split}_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
                row[f"{split}_per_seed"] = accs
        row["epochs"] = [len(r["metrics"]) for r in members]
        rows.append(row)
    return sorted(rows, key=lambda r: -r.get("val_mean", 0.0))


def format_summary(rows: list[dict]) -> str:
    lines = ["| config | seeds | val acc % (mean ± std) | test acc % (mean ± std) |",
             "|---|---|---|---|"]
    for r in rows:
        val = f"{100 * r['val_mean']:.2f} ± {100 * r['val_std']:.2f}" if "val_mean" in r else "-"
        test = f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}" if "test_mean" in r else "-"
        lines.append(f"| {r['config']} | {len(r['seeds'])} | {val} | {test} |")
    return "\n".join(lines)


PANELS = [("train CE (base)", "train_ce/0"), ("val accuracy (base)", "val_acc/0"),
          ("train matching loss (raw)", "train_match"), ("val CE (base)", "val_loss/0"),
          ("train accuracy (base)", "train_acc/0"), ("base-twin agreement", "train_agreement")]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Training curves of several runs overlaid (the paper's Fig. 2 / Fig. 3 panels), each
    run labelled by the config values that differ between them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    keys = differing_keys(runs)
    panels = [(t, k) for t, k in PANELS if any(k in m for r in runs for m in r["metrics"])]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, key) in zip(axes.flat, panels):
        for run in runs:
            pts = [(m["epoch"] + 1, m[key]) for m in run["metrics"] if key in m]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label(run, keys))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if key == "train_match":
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
