import pytest

from twinsnn.choices import check_choices
from twinsnn.config import (Config, dump_yaml, from_flat, from_record, load_config, preset_names,
                            read_yaml, resolve_key, to_flat)
from twinsnn.errors import ConfigError


def test_presets_load_and_round_trip(tmp_path):
    for name in preset_names():
        cfg = check_choices(load_config(name))
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
    ("model.dropout=1.0", "dropout"),
    ("model.decay=1.5", "\\[0, 1\\]"),
    ("noequals", "key=value"),
])
def test_bad_values_are_rejected_with_the_choices(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("fmnist-cpu", [override])


@pytest.mark.parametrize("override,match", [
    ("strategy=magic", "loss.strategy must be one of single, tna, kd, kd\\+ce, dml; got 'magic'$"),
    ("precision=fp16", "train.precision must be one of fp32, bf16; got 'fp16' "
                       "\\(did you mean bf16\\?\\)"),
    ("arch=cifarnett", "model.arch must be one of .*; got 'cifarnett' \\(did you mean "
                       "cifarnet\\?\\)"),
    ("data.name=fashion", "data.name must be one of fashion-mnist, .*did you mean fashion-mnist"),
    ("surrogate=nope", "model.surrogate must be one of boxcar, atan, sigmoid"),
    ("delta_per=channel", "quant.delta_per=channel needs quant.delta_rule=mean_abs"),
])
def test_names_are_checked_against_what_is_registered(override, match):
    """A config reads without its names checked (config imports no registry); whoever builds
    from it checks them against the registries (``check_choices``; ``fit`` does)."""
    cfg = load_config("fmnist-cpu", [override])
    with pytest.raises(ConfigError, match=match):
        check_choices(cfg)


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
    cfg = check_choices(load_config("fmnist-cpu", ["model.arch=mine", "width=0.0625"]))
    net = build_model(cfg.model, 10, 1, (28, 28))
    assert net(torch.zeros(1, 1, 28, 28)).shape == (5, 1, 10)


def test_a_neuron_registered_after_the_first_config_is_accepted(monkeypatch):
    import torch

    from twinsnn.models import build_model
    from twinsnn.neurons import LIF, NEURONS
    cfg = load_config("fmnist-cpu", ["width=0.0625"])  # parsed before the registration
    monkeypatch.setitem(NEURONS, "mine", LIF)
    cfg = check_choices(from_flat({**to_flat(cfg), "model.neuron": "mine"}))
    net = build_model(cfg.model, 10, 1, (28, 28))
    assert net(torch.zeros(1, 1, 28, 28)).shape == (5, 1, 10)


def test_the_config_module_imports_nothing_it_names():
    """Reading a config needs no data set, model, neuron, loss, quantizer or runtime module:
    config.py imports none of the package's modules but its errors."""
    from test_layout import imports

    assert imports()["twinsnn.config"] == {"twinsnn.errors"}
