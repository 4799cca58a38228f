"""Statistics of the summaries against values computed by hand, and `twinsnn report`."""
import json
import math

import pytest

from twinsnn.cli import main
from twinsnn.report import (curves_figure, family_report, holm, load_run, paired_difference,
                            paired_rows, summarize, t_interval)


def test_t_interval_by_hand():
    stats = t_interval([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, std sqrt(5/3), t_{0.975, 3} = 3.182446: half width 3.182446 * 1.290994 / 2
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert stats["n"] == 4 and stats["mean"] == 2.5
    assert stats["std"] == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half),
                                                                rel=1e-9)
    single = t_interval([0.9])
    assert single == {"n": 1, "mean": 0.9, "std": 0.0, "ci_low": None, "ci_high": None}


def test_paired_difference_by_hand():
    # differences 1, 2, 2: mean 5/3, std sqrt(1/3), t = (5/3) / (sqrt(1/3) / sqrt(3)) = 5 on
    # 2 degrees of freedom, whose CDF is 1/2 + t / (2 sqrt(t^2 + 2)) and 97.5% point
    # 0.95 / sqrt(2 * 0.975 * 0.025)
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 7: 9.0}, {0: 2.0, 1: 4.0, 2: 5.0, 5: 0.0})
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(5 / 3, rel=1e-12)
    p = 2 * (1 - (0.5 + 5 / (2 * math.sqrt(27))))
    assert d["p"] == pytest.approx(p, rel=1e-9)
    t975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    half = t975 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((5 / 3 - half, 5 / 3 + half), rel=1e-9)
    assert paired_difference({0: 1.0}, {1: 1.0}) == {"n": 0, "seeds": []}
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0})["p"] is None  # no spread


def test_holm_by_hand():
    # sorted 0.005 < 0.01 < 0.03 < 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
    # 2 x 0.03 = 0.06, 1 x 0.04 = 0.04 raised to the 0.06 before it (step-down monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    # 3 x 0.3 = 0.9; 2 x 0.8 = 1.6 capped at 1; 0.9 raised to 1; None is outside the family
    adjusted = holm([0.8, None, 0.3, 0.9])
    assert adjusted[1] is None
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx([1.0, 0.9, 1.0], rel=1e-12)
    assert holm([0.02]) == [0.02] and holm([]) == []


def fake_run(root, name, seed, val, test=None, machine=None, **config):
    """A run folder as `twinsnn train` leaves it (run.json, metrics.jsonl, test.json)."""
    run = root / name
    run.mkdir()
    sections = {"name": name, "train": {"seed": seed}, "quant": {"mode": "none"}}
    for key, value in config.items():
        section, field = key.split("__")
        sections.setdefault(section, {})[field] = value
    (run / "run.json").write_text(json.dumps({"config": sections, "machine": machine or {}}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_accuracy/0": val}) + "\n")
    if test is not None:
        (run / "test.json").write_text(json.dumps(
            {"accuracy": test} if isinstance(test, float) else test))
    return run


def test_report_pairs_configs_by_seed(tmp_path, capsys):
    runs = [fake_run(tmp_path, f"fp-seed{s}", s, v, t) for s, v, t in
            [(0, 0.90, 0.89), (1, 0.91, 0.90), (2, 0.92, 0.90)]]
    runs += [fake_run(tmp_path, f"t-seed{s}", s, v, t, quant__mode="ternary") for s, v, t in
             [(0, 0.88, 0.88), (1, 0.90, 0.88), (2, 0.89, 0.87)]]
    rows = summarize([load_run(r) for r in runs])
    assert [r["config"] for r in rows] == ["mode=none", "mode=ternary"]  # order first seen
    assert [r["name"] for r in rows] == ["fp", "t"]  # the folder names without -seed<N>
    [pair] = paired_rows(rows)
    assert pair["baseline"] == "fp"
    assert pair["test"]["mean"] == pytest.approx(-0.02, abs=1e-12)
    assert pair["test"]["seeds"] == [0, 1, 2]

    assert main(["report", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "| t | 3 | 89.00 ± 1.00 | [86.52, 91.48] | 87.67 ± 0.58 |" in out
    assert "| t | 3 | -2.00 |" in out and "against fp" in out
    for baseline in ("mode=ternary", "t"):  # a config label or a name
        assert main(["report", *map(str, runs), "--baseline", baseline, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["paired"][0]["name"] == "fp" and report["paired"][0]["baseline"] == "t"
        assert report["paired"][0]["val"]["mean"] == pytest.approx(0.02, abs=1e-12)
    (tmp_path / "more").mkdir()
    binary = fake_run(tmp_path / "more", "fp-seed3", 3, 0.5, quant__mode="binary")
    rows = summarize([load_run(r) for r in [*runs, binary]])
    assert [r["name"] for r in rows] == [None] * 3  # "fp" would name two configs


def test_report_adjusts_its_comparisons_by_holm(tmp_path, capsys):
    # test accuracies (fp, a, b) per seed: a - fp = +1, +2, +2 points (p_a, test_paired by
    # hand), b - fp = -1, -3, -2 (p_b); Holm over the two test comparisons of the table
    tests = {"fp": (0.80, 0.81, 0.82), "a": (0.81, 0.83, 0.84), "b": (0.79, 0.78, 0.80)}
    runs = [fake_run(tmp_path, f"{n}-seed{s}", s, 0.5 + s / 100 + (n != "fp") * (s + 1) / 100,
                     tests[n][s], loss__alpha=i) for i, n in enumerate(tests) for s in range(3)]
    p_a = 2 * (1 - (0.5 + 5 / (2 * math.sqrt(27))))  # t = 5 on 2 df, as above
    p_b = 2 * (1 - (0.5 + 2 * math.sqrt(3) / (2 * math.sqrt(12 + 2))))  # t = -2 sqrt(3)
    assert p_a < p_b < 2 * p_a  # so Holm gives a 2 p_a, and b max(1 x p_b, 2 p_a) = 2 p_a
    assert main(["report", *map(str, runs), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == {"correction": "holm", "val": 2, "test": 2}
    a, b = report["paired"]
    assert (a["test"]["p"], b["test"]["p"]) == pytest.approx((p_a, p_b), rel=1e-9)
    assert (a["test"]["p_holm"], b["test"]["p_holm"]) == pytest.approx((2 * p_a, 2 * p_a),
                                                                       rel=1e-9)
    assert main(["report", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "family of this table's 2 validation and, separately, 2 test comparisons" in out
    assert f"| +1.67 | [0.23, 3.10] | {p_a:.3g} | {2 * p_a:.3g} |" in out


def test_family_file_reports_its_comparisons_with_holm(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for s in range(3):
        fake_run(runs, f"fp-seed{s}", s, 0.5, {"accuracy": (0.80, 0.81, 0.82)[s],
                                               "loss": (0.50, 0.60, 0.70)[s]})
        fake_run(runs, f"tna-seed{s}", s, 0.5, {"accuracy": (0.81, 0.83, 0.84)[s],
                                                "loss": (0.40, 0.40, 0.60)[s]})
    fake_run(runs, "fp-seed9", 9, 0.5, 0.9)  # not named by the globs below
    family = tmp_path / "family.json"
    family.write_text(json.dumps({"title": "Claims", "comparisons": [
        {"comparison": "TNA - single", "metric": "test_accuracy",
         "baseline": ["runs/fp-seed[0-2]"], "other": ["runs/tna-seed*"]},
        {"comparison": "TNA - single, CE", "metric": "test_loss",
         "baseline": ["runs/fp-seed0", "runs/fp-seed[12]"], "other": ["runs/tna-seed*"]}]}))
    report = family_report(family)
    acc, ce = report["comparisons"]
    assert report["size"] == 2 and acc["seeds"] == ce["seeds"] == [0, 1, 2]
    assert acc["mean"] == pytest.approx(5 / 3, rel=1e-9) and acc["unit"] == "points"
    # CE differences -0.1, -0.2, -0.1: mean -0.4/3, std sqrt(1/300), t = -4 on 2 df
    assert ce["mean"] == pytest.approx(-0.4 / 3, rel=1e-9) and ce["unit"] == "nats"
    p_acc = 2 * (1 - (0.5 + 5 / (2 * math.sqrt(27))))
    p_ce = 2 * (1 - (0.5 + 4 / (2 * math.sqrt(18))))
    assert (acc["p"], ce["p"]) == pytest.approx((p_acc, p_ce), rel=1e-9)
    assert p_acc < p_ce < 2 * p_acc  # Holm: 2 p_acc, then max(1 x p_ce, 2 p_acc) = 2 p_acc
    assert (acc["p_holm"], ce["p_holm"]) == pytest.approx((2 * p_acc, 2 * p_acc), rel=1e-9)
    assert main(["report", "--family", str(family)]) == 0
    out = capsys.readouterr().out
    assert "over the family of the 2 comparisons below" in out
    assert (f"| TNA - single, CE | test cross-entropy of the base | 3 | -0.133 nats | "
            f"[-0.277, +0.010] | {p_ce:.3g} | {2 * p_acc:.3g} |") in out
    family.write_text(json.dumps({"comparisons": [{"comparison": "x", "metric": "test_acc",
                                                   "baseline": ["runs/nope*"], "other": []}]}))
    assert main(["report", "--family", str(family)]) == 2
    assert "x: no run folder matches 'runs/nope*'" in capsys.readouterr().err
    assert main(["report", "--family", str(family), str(runs / "fp-seed0")]) == 2
    assert "one of the two" in capsys.readouterr().err


def test_distilled_seeds_pool_across_their_teachers(tmp_path):
    # each KD seed learns from a net of another seed: one config, not one row per teacher
    runs = [fake_run(tmp_path, f"single-seed{s}", s, 0.80 + s / 100) for s in range(3)]
    runs += [fake_run(tmp_path, f"kd-seed{s}", s, 0.82 + s / 100, loss__strategy="kd",
                      loss__teacher=str(runs[(s + 1) % 3] / "checkpoint.pt")) for s in range(3)]
    rows = summarize([load_run(r) for r in runs])
    assert [(r["config"], r["n"], r["seeds"]) for r in rows] == [
        ("strategy=single", 3, [0, 1, 2]), ("strategy=kd", 3, [0, 1, 2])]
    [pair] = paired_rows(rows)
    assert pair["val"]["mean"] == pytest.approx(0.02, abs=1e-12) and pair["val"]["n"] == 3


def test_seeds_pool_only_within_one_kind_of_cpu(tmp_path):
    # the same config and seeds on two kinds of CPU (bitwise different runs): two rows, each
    # named by its kind; runs recorded before the machine record form their own row
    zen4 = {"cpu": "AMD EPYC", "family": "25", "model": "17", "isa_limits": {}}
    held = {**zen4, "isa_limits": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
    runs = [fake_run(tmp_path, f"{kind}-seed{s}", s, 0.8 + s / 100, machine=machine)
            for kind, machine in (("a", zen4), ("b", held), ("c", None)) for s in range(2)]
    rows = summarize([load_run(r) for r in runs])
    assert [(r["config"], r["seeds"]) for r in rows] == [
        ("machine=AMD EPYC family 25 model 17", [0, 1]),
        ("machine=AMD EPYC family 25 model 17 held to AVX2", [0, 1]),
        ("machine=unrecorded", [0, 1])]
    assert len(summarize([load_run(r) for r in runs[:2]])) == 1


def test_config_keys_newer_than_a_run_take_the_value_it_ran_with(tmp_path):
    # a run recorded before train.fuse_norm existed ran unfused, the default then (now fused):
    # it pools with one that records fuse_norm off
    old = fake_run(tmp_path, "a-seed0", 0, 0.8)
    new = fake_run(tmp_path, "a-seed1", 1, 0.9, train__fuse_norm=False)
    [row] = summarize([load_run(old), load_run(new)])
    assert row["seeds"] == [0, 1] and load_run(old)["config"]["train.fuse_norm"] is False


def test_report_bad_input_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path, "a-seed0", 0, 0.5)
    stray = tmp_path / "jobs.txt"
    stray.write_text("not a run")
    assert main(["report", str(run), str(stray)]) == 2
    err = capsys.readouterr().err
    assert "jobs.txt is not a run folder" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(run), "--baseline", "nope"]) == 2
    assert "no config 'nope'" in capsys.readouterr().err


def test_accuracy_figure(tmp_path, capsys):
    runs = [fake_run(tmp_path, f"{name}-seed{s}", s, 0.8 + s / 100, 0.79 + s / 100,
                     loss__strategy=name) for name in ("single", "tna") for s in range(3)]
    png = tmp_path / "fig3.png"
    assert main(["plot", "--accuracy", *map(str, runs), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bare = fake_run(tmp_path, "bare-seed0", 0, 0.5)
    assert main(["plot", "--accuracy", str(bare), "-o", str(tmp_path / "x.png")]) == 2
    assert "has a final test accuracy" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_each_run_keeps_its_colour_in_every_panel(tmp_path):
    # a single net logs no matching term: the twin runs must not take its colour there
    single = fake_run(tmp_path, "single-seed0", 0, 0.8, loss__strategy="single")
    tna = fake_run(tmp_path, "tna-seed0", 0, 0.8, loss__strategy="tna")
    record = {"epoch": 0, "val_accuracy/0": 0.8, "train_ce/0": 0.5}
    (single / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (tna / "metrics.jsonl").write_text(json.dumps({**record, "train_match": 3.0}) + "\n")
    fig = curves_figure([load_run(single), load_run(tna)])
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"strategy=single", "strategy=tna"}
    assert all(len(c) == 1 for c in colours.values())
    assert colours["strategy=single"] != colours["strategy=tna"]


def test_records_from_before_accuracy_was_spelled_out_are_read(tmp_path, capsys):
    """metrics.jsonl lines written with ``val_acc/0`` and ``train_acc/0`` (before accuracy
    was spelled out): the summaries and the curves read them as today's records."""
    runs = []
    for seed, val in ((0, 0.80), (1, 0.90)):
        run = fake_run(tmp_path, f"old-seed{seed}", seed, val)
        (run / "metrics.jsonl").write_text("".join(json.dumps(
            {"epoch": e, "train_acc/0": 0.5 + e / 10, "val_acc/0": val - (1 - e) / 10,
             "val_loss/0": 0.4}) + "\n" for e in (0, 1)))
        runs.append(run)
    [row] = summarize([load_run(r) for r in runs])
    assert row["val_per_seed"] == [0.80, 0.90]
    fig = curves_figure([load_run(r) for r in runs])
    titles = {ax.get_title(): ax for ax in fig.axes if ax.get_lines()}
    assert {"val accuracy (base)", "train accuracy (base)", "val CE (base)"} <= set(titles)
    assert list(titles["val accuracy (base)"].get_lines()[1].get_ydata()) == [0.80, 0.90]
    assert main(["report", *map(str, runs)]) == 0
    assert "85.00" in capsys.readouterr().out
