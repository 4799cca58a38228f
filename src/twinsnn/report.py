"""Reading finished runs back: summary tables across runs and seeds, and training curves."""
from __future__ import annotations

import json
import math
import statistics
import textwrap
from pathlib import Path

from .config import record_defaults
from .errors import TwinsnnError
from .metrics import ACCURACY, AGREEMENT, LOSS, member_key, new_name, part_key, renamed

IGNORED_KEYS = ("name", "out_dir", "train.tensorboard")  # they do not change the numbers
# Config values each seed has its own of: a distilled run's teacher is a net of another seed.
PER_SEED_KEYS = ("loss.teacher",)


def load_run(run_dir: Path) -> dict:
    """``{"dir", "config" (flat, with ``machine_kind`` as "machine"), "metrics" (list of epoch
    records), "info" (``run.json``), "test" (``test.json`` or {})}`` of one run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TwinsnnError(f"{run_dir} is not a run folder (not a directory)")
    try:
        info = json.loads((run_dir / "run.json").read_text())
        metrics = [renamed(json.loads(l)) for l in (run_dir / "metrics.jsonl").read_text()
                   .splitlines() if l.strip()]
    except FileNotFoundError as e:
        raise TwinsnnError(f"{run_dir} is not a run folder ({Path(e.filename).name} missing)") from None
    except json.JSONDecodeError as e:
        raise TwinsnnError(f"{run_dir}: unreadable run files ({e})") from None
    flat = record_defaults()  # a key newer than the run: the behaviour it had
    for section, value in info["config"].items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            flat[section] = value
    flat["machine"] = machine_kind(info.get("machine", {}))
    test_file = run_dir / "test.json"
    test = json.loads(test_file.read_text()) if test_file.exists() else {}
    return {"dir": str(run_dir), "config": flat, "metrics": metrics, "info": info, "test": test}


def machine_kind(machine: dict) -> str:
    """The kind of processor a run ran on (``run.json``'s ``machine``), kept beside its config:
    a run is bitwise reproducible only on its kind, so summaries pool seeds within one kind
    and name it where rows differ in it ("unrecorded" for runs older than the record)."""
    if "gpu" in machine:
        return machine["gpu"]
    if machine.get("family") is None:
        return "unrecorded"
    limits = sorted(set(machine.get("isa_limits", {}).values()))
    return (f"{machine['cpu']} family {machine['family']} model {machine['model']}"
            + (f" held to {'/'.join(limits)}" if limits else ""))


def differing_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values differ between ``runs`` (run name and folder excluded)."""
    keys = sorted({k for r in runs for k in r["config"]} - set(IGNORED_KEYS))
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def label(run: dict, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={run['config'].get(k)}" for k in keys) or Path(run["dir"]).name


def final_accuracy(run: dict, split: str) -> float | None:
    """The base's accuracy on ``split`` after the last epoch: from ``metrics.jsonl``, or for
    the test split from ``test.json`` (``twinsnn sweep --test``); None if neither has it."""
    last = run["metrics"][-1].get(member_key(split, ACCURACY))
    return run["test"].get(ACCURACY) if last is None and split == "test" else last


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample std, n and the Student-t confidence interval of the mean,
    ``mean +- t_{(1+level)/2, n-1} * std / sqrt(n)`` (``None`` bounds for n < 2)."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "std": 0.0, "ci_low": None, "ci_high": None}
    std = statistics.stdev(values)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(baseline: dict, other: dict, level: float = 0.95) -> dict:
    """``other - baseline`` over the seeds both have (``{seed: value}`` each): the mean
    difference with its Student-t interval and the two-sided paired t-test p-value
    (``None`` for fewer than 2 pairs or differences without spread)."""
    from scipy import stats

    seeds = sorted(set(baseline) & set(other))
    diffs = [other[s] - baseline[s] for s in seeds]
    if not diffs:
        return {"n": 0, "seeds": []}
    out = {"seeds": seeds, **t_interval(diffs, level), "p": None}
    if len(diffs) > 1 and out["std"] > 0:
        out["p"] = float(stats.ttest_rel([other[s] for s in seeds],
                                         [baseline[s] for s in seeds]).pvalue)
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (``None`` entries are not in the
    family and stay ``None``). With the m p-values sorted, p_(1) <= ... <= p_(m), the
    adjusted value of p_(i) is ``min(1, max_{j <= i} (m - j + 1) p_(j))``: rejecting where it
    is below a level keeps the chance of any false rejection in the family below that level."""
    family = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(family):
        running = max(running, (len(family) - rank) * p)
        adjusted[i] = min(1.0, running)
    return adjusted


def _group_key(run: dict, by_seed: str) -> str:
    """What makes runs the same config: everything but the seed, the values that go with it
    and where the runs were written."""
    return json.dumps({k: v for k, v in run["config"].items()
                       if k not in (by_seed, "data.dir", *PER_SEED_KEYS, *IGNORED_KEYS)},
                      sort_keys=True)


def _seedless(run: dict, by_seed: str) -> str:
    """The run folder's name without its ``-seed<N>`` suffix."""
    return Path(run["dir"]).name.removesuffix(f"-seed{run['config'].get(by_seed)}")


def summarize(runs: list[dict], by_seed: str = "train.seed") -> list[dict]:
    """One row per config (seeds pooled) in the order first seen: for the base's final val
    (and test) accuracy, the value per seed (``<split>_per_seed``, ``<split>_by_seed``) and
    ``t_interval``'s ``n``, mean, std and 95% interval. ``config`` labels a row by the config
    values that differ between rows (by the run folder name without its ``-seed<N>`` suffix
    where only seeds differ); ``name`` is that folder name where it tells every row apart,
    else None."""
    keys = [k for k in differing_keys(runs) if k not in (by_seed, *PER_SEED_KEYS)]
    groups: dict[str, list[dict]] = {}
    for run in (r for r in runs if r["metrics"]):
        groups.setdefault(_group_key(run, by_seed), []).append(run)
    names = [{_seedless(r, by_seed) for r in members} for members in groups.values()]
    by_name = all(len(n) == 1 for n in names) and len({min(n) for n in names}) == len(names)
    rows = []
    for members, name in zip(groups.values(), names):
        first = members[0]
        row = {"config": label(first, keys) if keys else _seedless(first, by_seed),
               "name": min(name) if by_name else None,
               "seeds": [r["config"].get(by_seed) for r in members]}
        for split in ("val", "test"):
            accs = [final_accuracy(r, split) for r in members]
            if all(a is not None for a in accs):
                stats = t_interval(accs)
                row.update({f"{split}_{k}": v for k, v in stats.items() if k != "n"})
                row[f"{split}_per_seed"] = accs
                row[f"{split}_by_seed"] = dict(zip(row["seeds"], accs))
        row["n"] = len(members)
        row["epochs"] = [len(r["metrics"]) for r in members]
        rows.append(row)
    return rows


def best_first(rows: list[dict]) -> list[dict]:
    """``rows`` sorted by mean validation accuracy, best first."""
    return sorted(rows, key=lambda r: -r.get("val_mean", 0.0))


def paired_rows(rows: list[dict], baseline: str | None = None) -> list[dict]:
    """Every row against ``baseline`` (a row's config label or name; default the first row),
    paired by seed: ``{"config", "name", "baseline", "<split>": paired_difference}`` for val
    and test, each with ``p_holm``: ``holm`` over that split's comparisons of these rows."""
    if not rows:
        return []
    base = rows[0] if baseline is None else next(
        (r for r in rows if baseline in (r["config"], r["name"])), None)
    if base is None:
        raise TwinsnnError(f"no config {baseline!r} among the runs; configs: "
                           + "; ".join(_row_label(r) for r in rows))
    out = []
    for row in rows:
        if row is base:
            continue
        entry = {"config": row["config"], "name": row["name"], "baseline": _row_label(base)}
        for split in ("val", "test"):
            if f"{split}_by_seed" in row and f"{split}_by_seed" in base:
                entry[split] = paired_difference(base[f"{split}_by_seed"],
                                                 row[f"{split}_by_seed"])
        out.append(entry)
    for split in ("val", "test"):
        diffs = [e[split] for e in out if e.get(split, {}).get("n")]
        for d, p in zip(diffs, holm([d["p"] for d in diffs])):
            d["p_holm"] = p
    return out


def family_sizes(paired: list[dict]) -> dict:
    """How many p-values each split's Holm family of ``paired_rows`` holds."""
    return {split: sum(e.get(split, {}).get("p") is not None for e in paired)
            for split in ("val", "test")}


METRICS = {  # name: (what it is, unit, scale to that unit, its value in a loaded run)
    f"val_{ACCURACY}": ("validation accuracy of the base", "points", 100.0,
                        lambda run: final_accuracy(run, "val")),
    f"test_{ACCURACY}": ("test accuracy of the base", "points", 100.0,
                         lambda run: final_accuracy(run, "test")),
    f"test_{LOSS}": ("test cross-entropy of the base", "nats", 1.0,
                     lambda run: run["test"].get(LOSS)),
}


def _family_side(folder: Path, patterns: list[str], metric: str, where: str) -> dict:
    """``{seed: value}`` of ``metric`` over the run folders that ``patterns`` (globs relative
    to ``folder``) name."""
    values = {}
    for pattern in patterns:
        dirs = sorted(folder.glob(pattern))
        if not dirs:
            raise TwinsnnError(f"{where}: no run folder matches {pattern!r} in {folder}")
        for run in map(load_run, dirs):
            seed, value = run["config"].get("train.seed"), METRICS[metric][3](run)
            if value is None:
                raise TwinsnnError(f"{where}: {run['dir']} has no {METRICS[metric][0]}")
            if seed in values:
                raise TwinsnnError(f"{where}: two runs of seed {seed} on one side")
            values[seed] = value
    return values


def family_report(path: Path) -> dict:
    """The comparisons a family file lists, each paired by seed (``paired_difference`` in
    its metric's unit), with ``p_holm``: ``holm`` over every p-value of the file. The file
    (JSON): ``{"title": ..., "comparisons": [{"comparison": name, "metric": one of
    METRICS, "baseline": [glob, ...], "other": [glob, ...]}, ...]}``, globs of run folders
    relative to the file; a metric as older files spell it (``test_acc``) is read as today's
    (``metrics.new_name``)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        entries = [(c["comparison"], new_name(c["metric"]), c["baseline"], c["other"])
                   for c in spec["comparisons"]]
    except FileNotFoundError:
        raise TwinsnnError(f"no family file {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TwinsnnError(f"{path}: not a family file ({type(e).__name__}: {e}); it lists "
                           "comparisons, each with comparison, metric, baseline and other"
                           ) from None
    out = []
    for name, metric, baseline, other in entries:
        if metric not in METRICS:
            raise TwinsnnError(f"{path}: {name}: metric {metric!r} is not one of "
                               + ", ".join(METRICS))
        what, unit, scale, _ = METRICS[metric]
        d = paired_difference(_family_side(path.parent, baseline, metric, name),
                              _family_side(path.parent, other, metric, name))
        d = {k: v * scale if k in ("mean", "std", "ci_low", "ci_high") and v is not None
             else v for k, v in d.items()}
        out.append({"comparison": name, "metric": metric, "unit": unit, **d})
    for entry, p in zip(out, holm([e.get("p") for e in out])):
        entry["p_holm"] = p
    return {"title": spec.get("title", path.name), "file": str(path), "correction": "holm",
            "size": sum(e.get("p") is not None for e in out), "comparisons": out}


def format_family(report: dict) -> str:
    """Markdown of ``family_report``: the family said first, then one row per comparison."""
    lines = [f"## {report['title']}", "",
             f"Holm's step-down correction over the family of the {report['size']} "
             f"comparisons below (`{report['file']}`); each paired by seed, p from the "
             "paired t-test, p (Holm) adjusted over the whole family.", "",
             "| comparison | metric | pairs | diff | 95% CI | p | p (Holm) |",
             "|---|---|---|---|---|---|---|"]
    for e in report["comparisons"]:
        digits = 2 if e["unit"] == "points" else 3
        ci = ("-" if e.get("ci_low") is None
              else f"[{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]")
        diff = "-" if not e["n"] else f"{e['mean']:+.{digits}f} {e['unit']}"
        lines.append(f"| {e['comparison']} | {METRICS[e['metric']][0]} | {e['n']} | {diff} "
                     f"| {ci} | {_p(e.get('p'))} | {_p(e.get('p_holm'))} |")
    return "\n".join(lines)


def _row_label(row: dict) -> str:
    return row.get("name") or row["config"]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ci(stats: dict, prefix: str = "") -> str:
    lo, hi = stats.get(f"{prefix}ci_low"), stats.get(f"{prefix}ci_high")
    return "-" if lo is None else f"[{_pct(lo)}, {_pct(hi)}]"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def format_summary(rows: list[dict], paired: list[dict] = ()) -> str:
    """Markdown: accuracies per config (%, mean ± std, 95% CI of the mean), then each paired
    difference (percentage points) with its 95% CI, its p-value and the p-value adjusted by
    ``holm`` over the split's comparisons in the table (the family, said above it)."""
    lines = ["| config | n | val acc % (mean ± std) | val 95% CI | test acc % (mean ± std) "
             "| test 95% CI |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for split in ("val", "test"):
            if f"{split}_mean" in r:
                cells += [f"{_pct(r[f'{split}_mean'])} ± {_pct(r[f'{split}_std'])}",
                          _ci(r, f"{split}_")]
            else:
                cells += ["-", "-"]
        lines.append(f"| {_row_label(r)} | {r['n']} | " + " | ".join(cells) + " |")
    if paired:
        sizes = family_sizes(paired)
        lines += ["", f"Paired by seed, against {paired[0]['baseline']} (percentage points; "
                  "p: paired t-test; p (Holm): adjusted by Holm's step-down method over the "
                  f"family of this table's {sizes['val']} validation and, separately, "
                  f"{sizes['test']} test comparisons):",
                  "", "| config | pairs | val diff | val 95% CI | val p | val p (Holm) "
                  "| test diff | test 95% CI | test p | test p (Holm) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for entry in paired:
            cells, pairs = [], 0
            for split in ("val", "test"):
                d = entry.get(split, {})
                pairs = max(pairs, d.get("n", 0))
                if d.get("n"):
                    cells += [f"{100 * d['mean']:+.2f}", _ci(d), _p(d["p"]),
                              _p(d.get("p_holm"))]
                else:
                    cells += ["-", "-", "-", "-"]
            lines.append(f"| {_row_label(entry)} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PANELS = [("train CE (base)", part_key("ce/0")), ("val accuracy (base)",
                                                 member_key("val", ACCURACY)),
          ("train matching loss (raw)", part_key("match")),
          ("val CE (base)", member_key("val", LOSS)),
          ("train accuracy (base)", member_key("train", ACCURACY)),
          ("base-twin agreement", AGREEMENT)]


def _figure_backend():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out) -> Path:
    from .analysis import save_figure
    try:
        return save_figure(fig, out)
    finally:
        fig.clf()


def curves_figure(runs: list[dict]):
    """The figure of ``plot_runs``: one panel per logged curve, each run in one colour in
    every panel (also in those where other runs have no curve)."""
    plt = _figure_backend()
    keys = differing_keys(runs)
    panels = [(t, k) for t, k in PANELS if any(k in m for r in runs for m in r["metrics"])]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, key) in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            pts = [(m["epoch"] + 1, m[key]) for m in run["metrics"] if key in m]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label(run, keys),
                        color=f"C{i}")  # the i-th colour of the cycle, in every panel
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if key == part_key("match"):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Training curves of several runs overlaid (the paper's Fig. 2 / Fig. 3 panels), each
    run labelled by the config values that differ between them."""
    plt = _figure_backend()
    fig = curves_figure([load_run(d) for d in run_dirs])
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)


def plot_accuracy(run_dirs: list[Path], out: Path, split: str = "test") -> Path:
    """Final accuracy of the base per config (seeds pooled, ``summarize``'s rows): the mean as
    a bar, each seed as a dot, the 95% interval as an error bar (the paper's Fig. 3)."""
    plt = _figure_backend()
    rows = [r for r in summarize([load_run(d) for d in run_dirs]) if f"{split}_mean" in r]
    if not rows:
        raise TwinsnnError(f"none of the runs has a final {split} accuracy"
                           + (" (evaluate them with `twinsnn sweep --test`)" if split == "test"
                              else ""))
    fig, ax = plt.subplots(figsize=(1.6 + 1.8 * len(rows), 4.2))
    means = [100 * r[f"{split}_mean"] for r in rows]
    low = [m - 100 * r[f"{split}_ci_low"] if r[f"{split}_ci_low"] is not None else 0.0
           for m, r in zip(means, rows)]
    ax.bar(range(len(rows)), means, yerr=[low, low], capsize=5, color="#9bb7d4",
           edgecolor="#33557a")
    for i, r in enumerate(rows):
        ax.plot([i] * len(r[f"{split}_per_seed"]), [100 * a for a in r[f"{split}_per_seed"]],
                "o", color="black", markersize=3)
    seeds = [100 * a for r in rows for a in r[f"{split}_per_seed"]]
    spread = max(seeds) - min(seeds)
    ax.set_ylim(min(seeds) - max(spread, 0.5), max(seeds) + max(spread, 0.5) / 2)
    names = ["\n".join(textwrap.fill(part, 24) for part in _row_label(r).split(", "))
             + f"\n(n={r['n']})" for r in rows]
    ax.set_xticks(range(len(rows)), names, fontsize=7)
    ax.set_ylabel(f"{split} accuracy of the base (%)")
    ax.set_title("mean, 95% CI (Student t) and seeds", fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, out)
    finally:
        plt.close(fig)
