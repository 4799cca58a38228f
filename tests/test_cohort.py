"""Cohorts (TNA) and KD through the real training loop, on a tiny Fashion-MNIST-format set."""
import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from twinsnn.api import fit
from twinsnn.checkpoint import load_checkpoint, load_model
from twinsnn.config import load_config
from twinsnn.data import build_data
from twinsnn.data.feeds import TensorFeed
from twinsnn.data.transforms import Preprocess
from twinsnn.inference import evaluate_file
from twinsnn.models import build_model
from twinsnn.train import Parts, build_trainer, train_one_epoch


def builtin(cfg, data):
    """The factory of the config's built-in network for ``data``."""
    return functools.partial(build_model, cfg.model, data.num_classes, data.in_channels,
                             data.image_size)


def tiny_cfg(folder, out, **extra):
    sets = {"data.dir": str(folder), "data.verify": False, "val_size": 40, "width": 0.0625,
            "batch_size": 32, "epochs": 1, "eval_batch_size": 100, "out_dir": str(out),
            "train.compile": False, **extra}
    return load_config("fmnist-cpu", sets)


@pytest.mark.slow
def test_tna_run_keeps_every_member_but_ships_the_base(tiny_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_fmnist, tmp_path, name="tna", strategy="tna", members=3, alpha=1e-3)
    record = fit(config=cfg, progress=False).record
    assert {"val_accuracy/0", "val_accuracy/1", "val_accuracy/2", "train_match", "train_agreement"} <= set(record)
    state = load_checkpoint(tmp_path / "tna" / "checkpoint.pt")
    assert len(state["members"]) == 3
    info = json.loads((tmp_path / "tna" / "run.json").read_text())
    assert len(set(info["member_seeds"])) == 3 and info["member_seeds"][0] == cfg.train.seed
    shipped = load_file(str(tmp_path / "tna" / "model.safetensors"))
    assert shipped.keys() == state["members"][0].keys()
    assert all(torch.equal(shipped[k], state["members"][0][k]) for k in shipped)
    assert not all(torch.equal(shipped[k], state["members"][1][k]) for k in shipped)
    twin = evaluate_file(tmp_path / "tna" / "checkpoint.pt", member=1, data_dir=str(tiny_fmnist))
    assert twin["member"] == 1 and twin["samples"] == 60


def test_members_draw_independent_inits_and_dropout_masks(tiny_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_fmnist, tmp_path, strategy="tna", members=2)
    data = build_data(cfg.data, cfg.model.timesteps)
    cohort = build_trainer(cfg, Parts(builtin(cfg, data))).cohort
    a, b = cohort.members
    assert not torch.equal(a.convs[1].synapse.weight, b.convs[1].synapse.weight)
    masks = []
    for m in cohort.members:
        m.dropouts[0].register_forward_hook(lambda mod, i, o: masks.append((o[0] == 0) & (i[0][0] != 0)))
    x = torch.randn(8, 1, 28, 28)
    cohort.outputs(x)
    assert masks[0].any() and not torch.equal(masks[0], masks[1])


@pytest.mark.slow
def test_kd_teacher_is_frozen_and_unchanged(tiny_fmnist, tmp_path):
    fit(config=tiny_cfg(tiny_fmnist, tmp_path, name="teacher"), progress=False)
    teacher_file = tmp_path / "teacher" / "model.safetensors"
    for strategy in ("kd", "kd+ce"):
        cfg = tiny_cfg(tiny_fmnist, tmp_path, strategy=strategy, teacher=str(teacher_file),
                       alpha=1e-2)
        data = build_data(cfg.data, cfg.model.timesteps)
        feed = TensorFeed(data.train, Preprocess(data, True), torch.device("cpu"))
        t = build_trainer(cfg, Parts(builtin(cfg, data), feed,
                                     teacher=load_model(teacher_file)[0]))
        cohort = t.cohort
        before = {k: v.clone() for k, v in cohort.teacher.state_dict().items()}
        student_before = cohort.members[0].convs[1].synapse.weight.clone()
        stats = train_one_epoch(t, 0)
        after = cohort.teacher.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats too: eval mode
        assert all(p.grad is None for p in cohort.teacher.parameters())
        assert not torch.equal(student_before, cohort.members[0].convs[1].synapse.weight)
        assert ("train_ce/0" in stats) == (strategy == "kd+ce")


@pytest.mark.slow
def test_kd_teacher_must_match_the_student(tiny_fmnist, tmp_path):
    fit(config=tiny_cfg(tiny_fmnist, tmp_path, name="teacher"), progress=False)
    cfg = tiny_cfg(tiny_fmnist, tmp_path, strategy="kd", width=0.125,
                   teacher=str(tmp_path / "teacher" / "model.safetensors"))
    from twinsnn.errors import ConfigError
    with pytest.raises(ConfigError, match="different network"):
        fit(config=cfg, progress=False)
