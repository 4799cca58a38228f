"""Compression of a network of one's own: which layers a normalization follows (forward
hooks for any module, the description for a SpikingNetwork), the scale ``quant.scale=auto``
gives each, the built-in networks untouched, the warning at the switch, and a GroupNorm/GELU
network without BatchNorm that keeps its accuracy through the switch on real Fashion-MNIST."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import twinsnn
from twinsnn.cohort import build_cohort
from twinsnn.config import ModelConfig
from twinsnn.data import fashion_mnist
from twinsnn.errors import TwinsnnError
from twinsnn.models import MODELS
from twinsnn.quant import compress, quantizer, select_layers, set_compression
from twinsnn.safeguards import chosen_scales_line, normalized, scales, switch_warning
from twinsnn.strategies import from_config

sys.path.insert(0, str(Path(__file__).parent.parent / "docs" / "runs" / "own-network"))
from groupnorm_gelu import make_net  # noqa: E402  the network of the measured runs

X = torch.randn(2, 1, 28, 28)


def test_hooks_find_what_follows_each_layer_of_a_plain_network():
    net = make_net()  # conv-GN-GELU-pool, conv-GN-GELU-pool, flatten, linear-GELU, linear
    names = select_layers(net)
    assert names == ["4", "9"]
    assert normalized(net, names, X) == {"4": True, "9": False}
    assert scales("auto", normalized(net, names, X)) == {"4": "none", "9": "layer"}
    assert scales("channel", {"4": True, "9": False}) == {"4": "channel", "9": "channel"}


class Mixed(nn.Module):
    """a: linear, ReLU, dropout, then BatchNorm (homogeneous steps between: normalized);
    b: linear, GELU, LayerNorm (GELU rescales unevenly: not); c: run twice, once before a
    norm and once not; d: a function norm hooks cannot see; e: never run."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(8, 8) for _ in range(5))
        self.relu, self.drop, self.bn = nn.ReLU(), nn.Dropout(0.1), nn.BatchNorm1d(8)
        self.gelu, self.ln, self.gn = nn.GELU(), nn.LayerNorm(8), nn.GroupNorm(2, 8)

    def forward(self, x):
        x = self.bn(self.drop(self.relu(self.a(x))))
        x = self.ln(self.gelu(self.b(x)))
        x = self.gn(self.c(x))
        x = self.c(x)
        return F.layer_norm(self.d(x), (8,))


def test_hooks_skip_homogeneous_steps_and_need_every_use_normalized():
    net, x = Mixed().train(), torch.randn(4, 8)
    before = torch.get_rng_state()
    got = normalized(net, ["a", "b", "c", "d", "e"], x)
    assert got == {"a": True, "b": False, "c": False, "d": False, "e": False}
    assert net.training and torch.equal(torch.get_rng_state(), before)  # the net untouched
    assert int(net.bn.num_batches_tracked) == 0


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_builtin_network_has_a_norm_after_each_compressed_layer(arch):
    """Every registered architecture: codes alone, as before quant.scale=auto (the main
    job's numbers stay); without the FC norm, its FC layers get a scale."""
    cfg = ModelConfig(arch=arch, width=0.0625, timesteps=2)
    net = MODELS[arch](cfg, 10, 1, (28, 28))
    names = select_layers(net)
    assert set(scales("auto", normalized(net, names)).values()) == {"none"}
    if arch == "cifarnet":
        bare = MODELS[arch](ModelConfig(width=0.0625, timesteps=2, fc_norm="none"), 10, 1,
                            (28, 28))
        got = normalized(bare, select_layers(bare))
        assert {n for n, v in got.items() if not v} == {"fcs.0.synapse", "fcs.1.synapse"}


def test_the_cohort_gives_each_compressed_layer_its_scale():
    """build_cohort finds the scales once, on a sample batch for a network of one's own, and
    keeps them in the meta a checkpoint carries; an explicit quant.scale holds everywhere."""
    cfg = twinsnn.make_config(mode="ternary", start_epoch=0, compile=False)
    cpu, strategy = torch.device("cpu"), from_config(cfg.loss)
    with pytest.raises(TwinsnnError, match="seen on a sample batch"):
        build_cohort(cfg, make_net, strategy, cpu)
    cohort = build_cohort(cfg, make_net, strategy, cpu, example=X)
    assert cohort.normalized == {"4": True, "9": False}
    assert cohort.scales == cohort.meta["quant_scales"] == {"4": "none", "9": "layer"}
    base = cohort.members[0]
    set_compression(base, cfg.quant, 0, cohort.layers, cohort.scales)
    assert (quantizer(base[4]).scale, quantizer(base[9]).scale) == ("none", "layer")
    channel = twinsnn.make_config(cfg, scale="channel")
    assert build_cohort(channel, make_net, strategy, cpu, example=X).scales == \
        {"4": "channel", "9": "channel"}
    assert build_cohort(twinsnn.make_config(), make_net, strategy, cpu).scales is None


def test_the_switch_warning_names_the_likely_cause():
    net = make_net()
    assert switch_warning(0.80, 0.78, net, {"9": "none"}, {"9": False}) is None
    bare = switch_warning(0.80, 0.25, net, {"4": "none", "9": "none"}, {"4": True, "9": False})
    assert bare.startswith("validation accuracy fell from 80.0% to 25.0% when compression "
                           "started: no normalization follows layer 9, and its ternary codes")
    compress(net, "ternary", delta=10.0, layers=["4"], full_precision_ends=False)  # all zero
    zeroed = switch_warning(0.80, 0.25, net, {"4": "none"}, {"4": True})
    assert "zeroes over 90% of the weights of layer 4" in zeroed
    compress(net, "ternary", delta=0.0, layers=["4"], full_precision_ends=False)
    assert "quant.lr_at_switch" in switch_warning(0.80, 0.25, net, {"4": "none"}, {"4": True})
    assert chosen_scales_line({"4": "none"}, {"4": True}) is None


@pytest.mark.skipif(fashion_mnist.locate(None) is None, reason="real Fashion-MNIST not installed")
def test_a_network_without_batchnorm_keeps_its_accuracy_through_the_switch(tmp_path, capsys):
    """The README quickstart's settings (a twin, ternary from epoch 1 of 2, D = 0.5 x mean|W|)
    on 3,000 real training images: with the defaults the hidden linear layer, which no
    normalization follows, gets a scale and validation accuracy holds through the switch;
    with quant.scale=none it collapses, and the run says why."""
    train, val, _ = twinsnn.datasets("fashion-mnist", train_size=3000, val_size=1000)
    common = dict(val=val, epochs=2, batch_size=64, lr=2e-3, strategy="tna", alpha=1e-4,
                  mode="ternary", start_epoch=1, delta_rule="mean_abs", delta=0.5,
                  out_dir=str(tmp_path), progress=False, compile=False)
    runs = {name: twinsnn.fit(make_net, train, name=name, **common, **extra)
            for name, extra in (("auto", {}), ("none", {"scale": "none"}))}
    acc = {name: [r["val_accuracy/0"] for r in run.metrics] for name, run in runs.items()}
    info = {name: json.loads((run.dir / "run.json").read_text()) for name, run in runs.items()}
    out = capsys.readouterr()
    assert acc["auto"][0] > 0.7 and acc["auto"][1] > acc["auto"][0] - 0.02, acc
    assert info["auto"]["compression"] == {"4": {"normalized": True, "scale": "none"},
                                           "9": {"normalized": False, "scale": "layer"}}
    assert "quant.scale=auto: no normalization follows layer 9" in out.out
    assert "warnings" not in info["auto"]
    assert acc["none"][0] == acc["auto"][0] and acc["none"][1] < acc["none"][0] - 0.2, acc
    assert "no normalization follows layer 9" in info["none"]["warnings"][0]
    assert "warning: validation accuracy fell" in out.err
    # the packed file keeps the scale, and a user's model reads it back exactly
    loaded = twinsnn.load(twinsnn.export(runs["auto"].model, tmp_path / "auto.tnn"),
                          model=make_net())
    x = val.tensors[0][:64]
    assert torch.equal(twinsnn.predict(loaded, x), twinsnn.predict(runs["auto"].model, x))
