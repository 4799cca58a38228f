"""The examples run end to end on a small subset of the real Fashion-MNIST (500 images, two
epochs): the training loss falls and the exported model reloads with equal outputs."""
import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).parent.parent / "examples"
NEEDS = {"spikingjelly_tna.py": "spikingjelly", "snntorch_tna.py": "snntorch", "cnn_tna.py": None}


@pytest.mark.slow
@pytest.mark.fmnist
@pytest.mark.parametrize("script", sorted(NEEDS))
def test_example_trains_and_reloads(script, tmp_path):
    if NEEDS[script] and importlib.util.find_spec(NEEDS[script]) is None:
        pytest.skip(f"{NEEDS[script]} not installed")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--train-size", "500",
                           "--epochs", "2", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    losses = ast.literal_eval(lines["train loss by epoch"])
    assert len(losses) == 2 and losses[1] < losses[0]
    assert lines["reloaded from model.tnn"] == "outputs equal"


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NEEDS)
