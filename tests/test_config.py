import pytest

from twinsnn.config import (Config, dump_yaml, from_flat, from_record, load_config, preset_names,
                            read_yaml, resolve_key, to_flat)
from twinsnn.errors import ConfigError


def test_presets_load_and_round_trip(tmp_path):
    for name in preset_names():
        cfg = load_config(name)
        assert from_flat(to_flat(cfg)) == cfg
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(cfg))
        assert load_config(str(path)) == cfg


def test_overrides_short_and_dotted_keys():
    cfg = load_config("fmnist-cpu", ["alpha=1e-3", "train.lr=0.002", "epochs=7"])
    assert cfg.loss.alpha == 1e-3 and cfg.train.lr == 0.002 and cfg.train.epochs == 7
    assert resolve_key("width") == "model.width"


@pytest.mark.parametrize("override,match", [
    ("bogus=1", "unknown config key 'bogus'; valid keys"),
    ("train.lr=0", "must be positive"),
    ("train.lr=-0.1", "must be positive"),
    ("batch_size=0", "must be positive"),
    ("batch_size=2.5", "must be int"),
    ("strategy=magic", "must be one of single, tna, kd, kd\\+ce"),
    ("model.dropout=1.0", "dropout"),
    ("model.decay=1.5", "\\[0, 1\\]"),
    ("noequals", "key=value"),
    ("precision=fp16", "must be one of fp32, bf16"),
])
def test_bad_values_are_rejected_with_the_choices(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("fmnist-cpu", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="fmnist-cpu"):
        load_config("no-such-preset")


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(str(bad))


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.lr_gamma, cfg.train.epochs) == (0.01, 256, 0.928, 250)
    assert (cfg.model.timesteps, cfg.model.dropout, cfg.quant.delta, cfg.quant.start_epoch) == (5, 0.2, 0.1, 150)


def test_extends_overlays_a_parent_and_refuses_cycles(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: fmnist-paper\nname: mine\ntrain: {epochs: 3}\n")
    cfg = load_config(str(child))
    assert cfg.name == "mine" and cfg.train.epochs == 3 and cfg.train.batch_size == 256
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="cycles"):
        load_config(str(loop))


def test_a_record_lacking_a_key_whose_default_changed_runs_as_it_was_recorded():
    # train.fuse_norm is on by default; records written before it existed ran unfused
    assert from_flat({}).train.fuse_norm is True
    assert from_record({}).train.fuse_norm is False
    assert from_record({"train.fuse_norm": True}).train.fuse_norm is True
    assert from_record({"train.epochs": 3}) == from_flat({"train.epochs": 3,
                                                           "train.fuse_norm": False,
                                                           "quant.scale": "none"})
    # quant.scale is auto by default; records before it ran codes alone
    assert (from_flat({}).quant.scale, from_record({}).quant.scale) == ("auto", "none")


def test_a_model_registered_after_the_first_config_is_accepted(monkeypatch):
    import torch

    from twinsnn.models import MODELS, build_model, cifarnet
    load_config("fmnist-cpu")  # configs were parsed before the registration
    monkeypatch.setitem(MODELS, "mine", lambda *a: cifarnet(*a))
    cfg = load_config("fmnist-cpu", ["model.arch=mine", "width=0.0625"])
    net = build_model(cfg.model, 10, 1, (28, 28))
    assert net(torch.zeros(1, 1, 28, 28)).shape == (5, 1, 10)
