"""Sweeps on a local Ray instance give what the local executor gives."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_cli import assert_one_line_error, cli
from test_sweep_plot import tiny_sweep_config

TIMES = ("epoch_time_s", "samples_per_s")


def _metrics(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in TIMES} for l in lines]


@pytest.mark.slow
def test_a_ray_sweep_equals_the_local_one_and_skips_finished_runs(tmp_path, tiny_fmnist, capsys):
    ray = pytest.importorskip("ray")
    cfg = tiny_sweep_config(tmp_path, tiny_fmnist)
    args = ["sweep", "--config", cfg, "--set", "alpha=1e-2,1e-5", "--seeds", "0", "--quiet"]
    assert cli(capsys, *args, "--out-dir", tmp_path / "local").returncode == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for attempt in range(2):
            proc = cli(capsys, *args, "--out-dir", tmp_path / "ray", "--executor", "ray")
            assert proc.returncode == 0, proc.err
            assert proc.stdout.count("finished, skipped") == 2 * attempt
    finally:
        ray.shutdown()
    summaries = [json.loads((tmp_path / out / "tiny-sweep" / "summary.json").read_text())
                 for out in ("local", "ray")]
    assert summaries[0] == summaries[1] and len(summaries[0]) == 2
    for name in ("tiny-alpha0.01-seed0", "tiny-alpha1e-05-seed0"):
        local, remote = tmp_path / "local" / name, tmp_path / "ray" / name
        assert _metrics(local) == _metrics(remote)
        a, b = (load_file(str(r / "model.safetensors")) for r in (local, remote))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, tiny_fmnist, capsys,
                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    cfg = tiny_sweep_config(tmp_path, tiny_fmnist)
    proc = cli(capsys, "sweep", "--config", cfg, "--set", "alpha=1e-2", "--executor", "ray",
               "--out-dir", tmp_path / "runs")
    assert_one_line_error(proc, "pip install", "ray")
    assert not (tmp_path / "runs").exists()


def test_an_address_without_the_ray_executor_is_refused(tmp_path, tiny_fmnist, capsys):
    cfg = tiny_sweep_config(tmp_path, tiny_fmnist)
    proc = cli(capsys, "sweep", "--config", cfg, "--set", "alpha=1e-2", "--address", "auto",
               "--out-dir", tmp_path / "runs")
    assert_one_line_error(proc, "--executor ray")
