"""Really trained CPU-scale models leave twinsnn as NIR graphs and run on integers, with the
checkpoint's own predictions on the real Fashion-MNIST test set (10,000 images)."""
import json
import os

import nir
import numpy as np
import pytest
import torch

from twinsnn.cli import main
from twinsnn.data import build_data
from twinsnn.inference import load_for_eval
from twinsnn.integer import IntegerLIF
from twinsnn.data.transforms import Preprocess
from twinsnn.losses import logits_of
from twinsnn.runtime import place

# the session's trained_runs fixture trains two real runs before the first of these
pytestmark = [pytest.mark.fmnist, pytest.mark.timeout(2400)]
HIDDEN = ["convs.1", "convs.2", "convs.3", "convs.4", "fcs.0", "fcs.1"]
# PyTorch's BatchNorm rounds k y + h once (as the folded neuron does) only where it has FMA
FMA = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.fixture(autouse=True)
def _every_core():
    """10,000-image passes are not tiny tensors: all cores, not conftest's one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


def logits(path, integer=False, split="test"):
    """Logits of the model in ``path`` over a whole split, as ``twinsnn eval`` feeds it, and
    the labels."""
    model, cfg = load_for_eval(path, integer=integer)
    data = build_data(cfg.data, cfg.model.timesteps)
    dataset = data.test if split == "test" else data.val
    preprocess = Preprocess(data, False, cfg.train.channels_last)
    model = place(model, cfg.train, torch.device("cpu")).eval()
    with torch.no_grad():
        return torch.cat([logits_of(model(preprocess(dataset.x[i:i + 1000])))
                          for i in range(0, len(dataset), 1000)]), dataset.y


def export_nir(source, out, *extra):
    assert main(["export", str(source), "--format", "nir", "-o", str(out), *extra]) == 0
    return nir.read(out)


@pytest.mark.slow
def test_full_precision_graph_scores_the_checkpoint_exactly(trained_runs, tmp_path):
    ckpt = trained_runs["fp"] / "checkpoint.pt"
    graph = export_nir(ckpt, tmp_path / "fp.nir")
    assert type(graph.nodes["pools.0"]).__name__ == "AvgPool2d"
    (want, labels), (got, _) = logits(ckpt), logits(tmp_path / "fp.nir")
    assert want.shape == (10000, 10)
    assert (want.argmax(1) == labels).float().mean() > 0.3  # really trained
    assert torch.equal(got.argmax(1), want.argmax(1))
    if FMA:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_ternary_graph_and_integer_path_score_the_checkpoint_exactly(trained_runs, tmp_path):
    run = trained_runs["ternary"]
    graph = export_nir(run / "model.safetensors", tmp_path / "t.nir")
    for name in HIDDEN:
        assert set(np.unique(graph.nodes[f"{name}.synapse"].weight)) <= {-1.0, 0.0, 1.0}
    assert type(graph.nodes["pools.0"]).__name__ == "SumPool2d"
    weights = export_nir(run / "checkpoint.pt", tmp_path / "w.nir", "--fold", "weights")
    for name in HIDDEN:
        assert set(np.unique(weights.nodes[f"{name}.synapse"].weight)) <= {-1.0, 0.0, 1.0}
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(tmp_path / "t.tnn")]) == 0

    want, labels = logits(run / "checkpoint.pt")
    assert (want.argmax(1) == labels).float().mean() > 0.3
    assert torch.equal(logits(tmp_path / "t.nir")[0], want)
    integer = logits(tmp_path / "t.tnn", integer=True)[0]
    assert torch.equal(integer.argmax(1), want.argmax(1))
    assert torch.equal(integer, want)


@pytest.mark.slow
def test_eval_reports_operations_and_energy(trained_runs, tmp_path, capsys):
    run = trained_runs["ternary"]
    assert main(["eval", str(run / "model.safetensors"), "--integer", "--split", "val",
                 "--json", "--plot", str(tmp_path / "ops.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert report["integer"] and report["accuracy"] == metrics[-1]["val_accuracy/0"]
    ops = report["operations"]
    rows = {r["layer"]: r for r in ops["layers"]}
    assert list(rows) == ["convs.0", *HIDDEN, "out"]
    assert rows["convs.0"]["macs"] > 0 and rows["convs.0"]["synops"] == 0
    assert all(rows[n]["mode"] == "ternary" and rows[n]["op"] == "add" for n in HIDDEN)
    assert all(0 < rows[n]["synops"] and 0 < rows[n]["firing_rate"] < 1 for n in HIDDEN)
    assert ops["total"]["bytes_packed"] < ops["total"]["bytes_float32"] / 4
    assert 0 < ops["energy_pj"]["snn_integer"] < ops["energy_pj"]["snn"]
    assert (tmp_path / "ops.png").read_bytes()[:4] == b"\x89PNG"
    model, _ = load_for_eval(run / "model.safetensors", integer=True)
    assert isinstance(model.fcs[1].neuron, IntegerLIF)

    assert main(["eval", str(trained_runs["fp"] / "checkpoint.pt"), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "SynOps" in text and "energy per sample" in text and "Horowitz" in text
