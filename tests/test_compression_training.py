"""Delayed ternary compression inside the training loop, export and the packed round trip."""
import json
import re

import pytest
import torch

from twinsnn.checkpoint import load_checkpoint
from twinsnn.cli import main
from twinsnn.config import load_config
from twinsnn.errors import ConfigError
from twinsnn.inference import evaluate_file
from twinsnn.packed import size_report
from twinsnn.api import fit


def cfg_for(folder, out, **extra):
    sets = {"data.dir": str(folder) if folder else None, "data.verify": folder is None,
            "val_size": 40, "width": 0.0625, "batch_size": 32, "epochs": 2, "eval_batch_size": 500,
            "out_dir": str(out), "train.compile": False, "quant.mode": "ternary",
            "quant.start_epoch": 1, **extra}
    return load_config("fmnist-cpu", sets)


@pytest.mark.slow
def test_only_the_base_is_compressed_and_only_from_start_epoch(tiny_fmnist, tmp_path):
    cfg = cfg_for(tiny_fmnist, tmp_path, name="tna-t", strategy="tna", **{"quant.lr_at_switch": 0.002})
    fit(config=cfg, progress=False)
    metrics = [json.loads(l) for l in (tmp_path / "tna-t" / "metrics.jsonl").read_text().splitlines()]
    assert [m["compressed"] for m in metrics] == [False, True]
    assert metrics[1]["lr"] == pytest.approx(0.002 * 0.928 ** (7 // 20), rel=1e-6)
    state = load_checkpoint(tmp_path / "tna-t" / "checkpoint.pt")
    base, twin = state["members"]
    assert any(".parametrizations.weight.original" in k for k in base)
    assert not any("parametrizations" in k for k in twin)
    shipped = evaluate_file(tmp_path / "tna-t" / "model.safetensors", data_dir=str(tiny_fmnist))
    from_ckpt = evaluate_file(tmp_path / "tna-t" / "checkpoint.pt", data_dir=str(tiny_fmnist))
    assert shipped["confusion"] == from_ckpt["confusion"]


def _drop_times(path):
    return [{k: v for k, v in json.loads(l).items() if k not in ("epoch_time_s", "samples_per_s")}
            for l in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ternary", "binary"])
def test_branching_a_full_precision_run_at_the_switch_equals_the_straight_run(tiny_fmnist, tmp_path, mode):
    straight = cfg_for(tiny_fmnist, tmp_path, name="straight", **{"quant.mode": mode})
    fit(config=straight, progress=False)
    fp = cfg_for(tiny_fmnist, tmp_path, name="fp", epochs=1, **{"quant.mode": "none"})
    fit(config=fp, progress=False)
    branched = cfg_for(tiny_fmnist, tmp_path, name="branched", **{"quant.mode": mode})
    fit(config=branched, progress=False, branch_from=tmp_path / "fp" / "checkpoint.pt")
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "branched" / "checkpoint.pt")
    assert a["members"][0].keys() == b["members"][0].keys()
    assert all(torch.equal(a["members"][0][k], b["members"][0][k]) for k in a["members"][0])
    moments = [(s["exp_avg"], t["exp_avg"]) for s, t in zip(a["optimizer"]["state"].values(),
                                                            b["optimizer"]["state"].values())]
    assert moments and all(torch.equal(x, y) for x, y in moments)
    assert _drop_times(tmp_path / "straight" / "metrics.jsonl") == \
        _drop_times(tmp_path / "branched" / "metrics.jsonl")
    info = json.loads((tmp_path / "branched" / "run.json").read_text())
    assert info["branched_from"]["epochs_done"] == 1 and info["branched_from"]["name"] == "fp"


@pytest.mark.slow
def test_resume_across_the_switch(tiny_fmnist, tmp_path):
    straight = cfg_for(tiny_fmnist, tmp_path, name="straight")
    fit(config=straight, progress=False)
    interrupted = cfg_for(tiny_fmnist, tmp_path, name="resumed")
    fit(config=cfg_for(tiny_fmnist, tmp_path, name="resumed", epochs=1), progress=False)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    from twinsnn.config import to_flat
    state["config"] = to_flat(interrupted)  # as if the 2-epoch run had stopped after epoch 1
    torch.save(state, tmp_path / "resumed" / "checkpoint.pt")
    fit(config=interrupted, resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["members"][0]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["members"][0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"train.lr": 0.001}, "other values of train.lr"),
    ({"epochs": 1}, "raise train.epochs"),
    ({"quant.start_epoch": 0}, "differ in quant.* or loss.alpha_compressed before epoch 1"),
])
def test_branching_refuses_what_would_not_equal_a_straight_run(tiny_fmnist, tmp_path, change, message):
    fit(config=cfg_for(tiny_fmnist, tmp_path, name="fp", epochs=1, **{"quant.mode": "none"}), progress=False)
    cfg = cfg_for(tiny_fmnist, tmp_path, name="branch", **change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit(config=cfg, progress=False, branch_from=tmp_path / "fp" / "checkpoint.pt")
    assert not (tmp_path / "branch").exists()


@pytest.mark.slow
@pytest.mark.fmnist
def test_packed_model_matches_training_evaluation_on_real_fashion_mnist(tmp_path, capsys):
    """On the validation split: 500 real images, where the 10,000 of the test split would
    take most of the suite's time to evaluate twice."""
    cfg = cfg_for(None, tmp_path, name="real", **{"data.train_limit": 256, "val_size": 500})
    fit(config=cfg, progress=False)
    tnn = tmp_path / "model.tnn"
    assert main(["export", str(tmp_path / "real" / "checkpoint.pt"), "-o", str(tnn)]) == 0
    assert "zero weights per compressed layer" in capsys.readouterr().out
    packed = evaluate_file(tnn, split="val")
    trained = evaluate_file(tmp_path / "real" / "checkpoint.pt", split="val")
    assert packed["samples"] == 500 and packed["confusion"] == trained["confusion"]
    for row in size_report(tnn):
        if row.mode == "ternary":
            assert row.bits <= 2.1


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(0.0, 1e-2), (1e-4, 1e-2)])
def test_matching_weight_changes_at_the_switch(tiny_fmnist, tmp_path, before, after):
    """Late matching (0 before the switch) and a raised weight: each epoch's weighted term is
    its alpha times its matching term, and a branch at the switch may change the weight."""
    cfg = cfg_for(tiny_fmnist, tmp_path, name="late", strategy="tna", alpha=before,
                  **{"loss.alpha_compressed": after})
    fit(config=cfg, progress=False)
    metrics = [json.loads(l) for l in (tmp_path / "late" / "metrics.jsonl").read_text().splitlines()]
    for record, alpha in zip(metrics, (before, after)):
        assert record["train_match_weighted"] == pytest.approx(alpha * record["train_match"],
                                                               rel=1e-5, abs=0)
    fp = cfg_for(tiny_fmnist, tmp_path, name="fp", epochs=1, strategy="tna", alpha=before,
                 **{"quant.mode": "none"})
    fit(config=fp, progress=False)
    branched = cfg_for(tiny_fmnist, tmp_path, name="branched", strategy="tna", alpha=before,
                       **{"loss.alpha_compressed": after})
    fit(config=branched, progress=False, branch_from=tmp_path / "fp" / "checkpoint.pt")
    assert _drop_times(tmp_path / "branched" / "metrics.jsonl") == \
        _drop_times(tmp_path / "late" / "metrics.jsonl")


def test_a_compressed_phase_weight_needs_compression(tmp_path):
    with pytest.raises(ConfigError, match="alpha_compressed"):
        load_config("fmnist-cpu-tna", {"loss.alpha_compressed": 1e-3})
