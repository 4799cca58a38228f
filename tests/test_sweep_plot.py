"""Sweeps, summaries and plots over real (tiny) runs."""
import json

import pytest

from twinsnn.cli import main
from twinsnn.inference import evaluate_file
from twinsnn.report import differing_keys, load_run, summarize
from twinsnn.sweep import grid


def test_grid_is_the_cartesian_product():
    points = grid(["alpha=1e-3,1e-4", "train.lr=0.01,0.02"], [0, 1])
    assert len(points) == 8
    assert points[0] == {"loss.alpha": 1e-3, "train.lr": 0.01, "train.seed": 0}


def tiny_sweep_config(tmp_path, tiny_fmnist):
    """A 1-epoch TNA config at width 1/16 on the tiny data set, as a YAML file."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""extends: fmnist-cpu-tna
name: tiny
data: {{dir: {tiny_fmnist}, verify: false, val_size: 40}}
model: {{width: 0.0625}}
train: {{epochs: 1, batch_size: 32, eval_batch_size: 100, compile: false}}
""")
    return cfg


@pytest.mark.slow
def test_sweep_trains_skips_finished_and_summarizes(tiny_fmnist, tmp_path, capsys):
    cfg = tiny_sweep_config(tmp_path, tiny_fmnist)
    args = ["sweep", "--config", str(cfg), "--set", "alpha=1e-2,1e-5", "--seeds", "0",
            "--out-dir", str(tmp_path / "runs"), "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count(": training") == 2 and "best on validation" in first
    assert "test_mean" not in json.loads((tmp_path / "runs" / "tiny-sweep" / "summary.json")
                                         .read_text())[0]
    assert main(args + ["--test"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2
    rows = json.loads((tmp_path / "runs" / "tiny-sweep" / "summary.json").read_text())
    assert {r["config"] for r in rows} == {"alpha=0.01", "alpha=1e-05"}
    assert rows[0]["val_mean"] >= rows[1]["val_mean"]
    for row in rows:  # the test accuracy is the model file's, evaluated once after training
        run = tmp_path / "runs" / ("tiny-alpha0.01-seed0" if row["config"] == "alpha=0.01"
                                   else "tiny-alpha1e-05-seed0")
        report = evaluate_file(run / "model.safetensors", split="test")
        assert row["test_per_seed"] == [report["accuracy"]]
        assert json.loads((run / "test.json").read_text())["samples"] == report["samples"]

    runs = sorted((tmp_path / "runs").glob("tiny-alpha*"))
    assert differing_keys([load_run(r) for r in runs]) == ["loss.alpha"]
    png = tmp_path / "fig.png"
    assert main(["plot", *map(str, runs), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    for bad, says in ((tmp_path, "name a file ending in"), (png / "fig.png", "cannot write")):
        assert main(["plot", *map(str, runs), "-o", str(bad)]) == 2  # a folder; under a file
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not list(tmp_path.glob("*.png.png")) and not (tmp_path.with_suffix(".png")).exists()
    assert main(["report", *map(str, runs)]) == 0
    assert "| tiny-alpha0.01 | 1 |" in capsys.readouterr().out


def test_summary_pools_seeds_of_one_config():
    def run(seed, val, test):
        return {"dir": f"runs/net-seed{seed}", "test": {"accuracy": test},
                "config": {"name": f"net-seed{seed}", "train.seed": seed, "loss.alpha": 1e-4},
                "metrics": [{"val_accuracy/0": 0.5}, {"val_accuracy/0": val}]}

    [row] = summarize([run(0, 0.80, 0.70), run(1, 0.90, 0.74), run(2, 0.85, 0.72)])
    assert row["config"] == "net" and row["seeds"] == [0, 1, 2] and row["epochs"] == [2, 2, 2]
    assert row["val_per_seed"] == [0.80, 0.90, 0.85] and abs(row["val_mean"] - 0.85) < 1e-12
    assert abs(row["val_std"] - 0.05) < 1e-12 and abs(row["test_mean"] - 0.72) < 1e-12
