"""The portable NIR graph against eq. 1 on hand-made tensors: one threshold per layer, BatchNorm
in the weights, ternary weights as codes times a factor per channel, thresholds halfway
between the potentials a compressed layer can reach; read back by twinsnn."""
import itertools
import json
from fractions import Fraction

import nir
import numpy as np
import pytest
import torch

import twinsnn
from twinsnn.cli import main
from twinsnn.errors import CheckpointError
from twinsnn.fold import FoldedBlock, fold_layers
from twinsnn.nir import DT
from twinsnn.portable import FORMAT, lattice_threshold, readout_weights, to_portable

META = {"model": dict(arch="cifarnet", num_classes=10, in_channels=1, width=0.125,
                      image_size=[28, 28], timesteps=5),
        "data": {"name": "fashion-mnist", "mean": [0.286], "std": [0.353]}, "config": {}}


def potentials(gain, shift, decay, sums):
    """Eq. 1 in exact arithmetic for a channel of gain ``g`` and shift ``h`` fed the integer
    synaptic sums ``S[t]``: each step's potential, and its spike at ``u >= theta = 1``."""
    u, out = Fraction(0), []
    for s in sums:
        u = Fraction(decay) * u + Fraction(gain) * s + Fraction(shift)
        out.append((u, u >= 1))
        u = 0 if u >= 1 else u
    return out


@pytest.mark.parametrize("decay,timesteps", [(0.5, 3), (0.25, 2), (0.0, 2)])
def test_lattice_threshold_separates_every_reachable_potential(decay, timesteps):
    """Every potential the channel reaches from sums in -3..3 fires at ``u >= 1`` exactly when
    it is above ``theta'``, and lies at least ``margin`` away from it (to float64 rounding)."""
    gain = torch.tensor([0.25, 0.3, 0.07, 1.0], dtype=torch.float64)
    shift = torch.tensor([0.25, -0.2, 0.5, 0.0], dtype=torch.float64)
    f = FoldedBlock(torch.ones(4, 1), gain, shift, True, False)
    middle, margin = lattice_threshold(f, 1.0, decay, timesteps)
    assert np.all(margin > 0)
    for c in range(4):
        for sums in itertools.product(range(-3, 4), repeat=timesteps):
            for u, fired in potentials(gain[c].item(), shift[c].item(), decay, sums):
                assert fired == (u > middle[c])
                assert abs(u - Fraction(middle[c])) >= margin[c] * (1 - 1e-12)  # float64


def test_no_lattice_for_a_decay_that_is_no_power_of_a_half():
    f = FoldedBlock(torch.ones(1, 1), torch.ones(1, dtype=torch.float64),
                    torch.zeros(1, dtype=torch.float64), True, False)
    assert lattice_threshold(f, 1.0, 0.9, 3) is None


@pytest.mark.parametrize("mode,scale", [("none", "none"), ("ternary", "none"),
                                        ("ternary", "channel"), ("binary", "none")])
def test_every_layer_has_one_threshold_and_its_weights_carry_the_batchnorm(spread_net, mode,
                                                                           scale, tmp_path):
    model = spread_net(mode, scale)
    graph = to_portable(model, META)
    info = json.loads(graph.metadata["twinsnn"])
    assert info["format"] == FORMAT and info["meta"] == META and info["dt"] == DT
    folded = fold_layers(model)
    for name, f in folded.items():
        lif, synapse = graph.nodes[f"{name}.lif"], graph.nodes[f"{name}.synapse"]
        assert np.all(lif.r == 1) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
        assert np.all(lif.v_threshold == 1) and np.all(1 - DT / lif.tau == 0.5)
        layer = info["layers"][name]
        if not f.compressed:
            assert layer == {"weights": "full precision"}
            continue
        factor = np.array(layer["factor"], np.float32).reshape(-1, *[1] * (f.weight.dim() - 1))
        assert np.array_equal(synapse.weight, f.weight.numpy().astype(np.float32) * factor)
        assert np.all(factor > 0) and 0 < layer["margin"] <= 0.5
    assert isinstance(graph.nodes["pools.0"], nir.SumPool2d)
    assert graph.edges[-1] == ("out.synapse", "output")
    assert info["readout"]["weights"] == readout_weights(0.5, 5) == [1.9375, 1.875, 1.75, 1.5, 1]

    path = twinsnn.export(model, tmp_path / "m.nir", format="nir-portable", meta=META)
    loaded, x = twinsnn.load(path), torch.randn(8, 1, 28, 28)
    assert loaded.meta["model"] == {"num_classes": 10, "in_channels": 1, "image_size": [28, 28]}
    want, got = twinsnn.predict(model, x), twinsnn.predict(loaded, x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_first_layers_gain_and_the_pools_divisor_go_into_the_weights(spread_net):
    """A full-precision layer after a pool: ``W k / area / (1 - a)``, bias ``h / (1 - a)``."""
    model = spread_net("none")
    graph = to_portable(model, META)
    f = fold_layers(model)["convs.2"]  # after pools.0 (2x2)
    want = (f.weight * (f.gain / 4 / 0.5).view(-1, 1, 1, 1)).float().numpy()
    assert np.array_equal(graph.nodes["convs.2.synapse"].weight, want)
    assert np.array_equal(graph.nodes["convs.2.synapse"].bias, (f.shift / 0.5).float().numpy())


def test_a_portable_graph_with_broken_metadata_is_one_line_and_exit_2(spread_net, tmp_path,
                                                                      capsys):
    graph = to_portable(spread_net(), META)
    info = json.loads(graph.metadata["twinsnn"])
    nir.write(tmp_path / "bad.nir", nir.NIRGraph(
        nodes=graph.nodes, edges=graph.edges,
        metadata={"twinsnn": json.dumps({**info, "readout": {"decay": "half"}})}))
    with pytest.raises(CheckpointError, match="no readout"):
        twinsnn.load(tmp_path / "bad.nir")
    assert main(["eval", str(tmp_path / "bad.nir")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readout" in err[0]
