"""Every format of the registry round-trips every built-in architecture and a network of your
own, as a user writes and reads them: ``twinsnn.export`` then ``twinsnn.load`` (a network of
your own with ``model=``) give the network's outputs, ``twinsnn eval`` of a built-in one's file
its accuracy; files written by twinsnn 0.2.0 still load."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import twinsnn
from test_architectures import real_batch
from twinsnn.cli import main
from twinsnn.errors import CheckpointError, ConfigError
from twinsnn.formats import FORMATS, describe, format_of
from twinsnn.nir import FORMAT as NIR_FORMAT
from twinsnn.nir import graph_format, write_graph
from twinsnn.structure import INPUT, Node, SpikingNetwork

PREVIOUS = Path(__file__).parent / "data" / "v0.2.0"
BITWISE = [name for name, f in FORMATS.items() if f.own or name == "nir"]


def logits(net, x):
    return twinsnn.predict(net, x)


def cli_eval(capsys, path, folder, *extra) -> dict:
    capsys.readouterr()
    assert main(["eval", str(path), "--json", "--data-dir", str(folder), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from conftest import write_tiny_fmnist
    return write_tiny_fmnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module", params=sorted(twinsnn.MODELS))
def trained(request, tiny_data, tmp_path_factory):
    """A built-in architecture trained for one epoch with ternary weights throughout."""
    torch.set_num_threads(1)
    arch = request.param
    run = twinsnn.fit(arch, config="fmnist-cpu", progress=False,
                      out_dir=str(tmp_path_factory.mktemp("runs")), name=arch,
                      dir=str(tiny_data), verify=False, val_size=40, width=0.0625, timesteps=2,
                      epochs=1, batch_size=32, mode="ternary", start_epoch=0,
                      delta_rule="mean_abs", delta=0.5, compile=False)
    return run


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_round_trips_every_architecture(name, trained, tiny_data, tmp_path,
                                                     capsys):
    fmt, base = FORMATS[name], trained.model.eval()
    x, _ = real_batch(tiny_data)
    path = twinsnn.export(base, tmp_path / f"model{fmt.suffix}", format=name)
    assert format_of(path) is fmt
    loaded = twinsnn.load(path)
    if name in BITWISE:
        assert torch.equal(logits(loaded, x), logits(base, x))
    else:
        assert torch.equal(logits(loaded, x).argmax(1), logits(base, x).argmax(1))
        torch.testing.assert_close(logits(loaded, x), logits(base, x), rtol=1e-4, atol=1e-4)
    want = twinsnn.evaluate(base, data_dir=str(tiny_data))
    got = cli_eval(capsys, path, tiny_data)
    assert got["accuracy"] == want["accuracy"] and got["confusion"] == want["confusion"]
    assert got["samples"] == 60 and got["data"] == "fashion-mnist"


def test_a_loaded_checkpoint_exports_to_files_that_need_no_model(trained, tiny_data, tmp_path,
                                                                 capsys):
    """The network ``twinsnn.load("checkpoint.pt")`` gives carries the run's description, so
    every file written from it is read back, and scored, without ``model=``."""
    net = twinsnn.load(trained.dir / "checkpoint.pt")
    assert net.meta["config"] == describe(trained.model)["config"]
    x, _ = real_batch(tiny_data)
    for name in BITWISE:
        path = twinsnn.export(net, tmp_path / f"again{FORMATS[name].suffix}", format=name)
        assert torch.equal(logits(twinsnn.load(path), x), logits(trained.model, x))
    assert cli_eval(capsys, path, tiny_data)["samples"] == 60


class Own(nn.Module):
    """A network of the user's own class: no description of its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                                  nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.body(x)


def test_every_format_round_trips_a_network_of_your_own(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,)))
    run = twinsnn.fit(Own, data, out_dir=str(tmp_path), name="own", epochs=2, batch_size=16,
                      mode="ternary", start_epoch=1, delta_rule="mean_abs", delta=0.5,
                      compile=False, progress=False)
    x = torch.randn(16, 1, 8, 8)
    for name, fmt in FORMATS.items():
        path = tmp_path / f"own{fmt.suffix}"
        if not fmt.own:  # a graph is written from a network's structure, which this lacks
            with pytest.raises(ConfigError, match="twinsnn.structure nodes"):
                twinsnn.export(run.model, path, format=name)
            assert not path.exists()
            continue
        twinsnn.export(run.model, path, format=name)
        loaded = twinsnn.load(path, model=Own())
        assert torch.equal(logits(loaded, x), logits(run.model, x))
        with pytest.raises(CheckpointError, match="a network of your own"):
            twinsnn.load(path)
    assert describe(run.model) == {"model": {"class": f"{Own.__module__}.Own"}}


def own_spiking_network() -> SpikingNetwork:
    """A network built by hand from ``twinsnn.structure`` nodes: a conv layer, a pool and the
    readout, with spread BatchNorm statistics."""
    from twinsnn.layers import SpikingBlock
    from twinsnn.neurons import LIF
    torch.manual_seed(0)
    block = SpikingBlock(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         LIF(0.5, 1.0))
    with torch.no_grad():
        block.norm.running_mean.uniform_(-0.5, 0.5)
        block.norm.running_var.uniform_(0.5, 2.0)
    modules = {"conv": block, "pool": nn.AvgPool2d(2), "out": nn.Linear(4 * 4 * 4, 3)}
    nodes = [Node("conv", "layer", (INPUT,), block), Node("pool", "pool", ("conv",),
                                                           modules["pool"]),
             Node("flat", "flatten", ("pool",)), Node("out", "readout", ("flat",),
                                                      modules["out"])]
    return SpikingNetwork(modules, nodes, timesteps=3, readout_decay=0.5).eval()


SHAPE = {"model": {"in_channels": 1, "image_size": [8, 8], "num_classes": 3}}


def test_a_structure_network_of_your_own_goes_to_every_format(tmp_path):
    net, x = own_spiking_network(), torch.randn(5, 1, 8, 8) * 2
    for name, fmt in FORMATS.items():
        if fmt.own:
            path = twinsnn.export(net, tmp_path / f"s{fmt.suffix}", format=name)
            loaded = twinsnn.load(path, model=own_spiking_network())
        else:
            path = twinsnn.export(net, tmp_path / f"s{fmt.suffix}", format=name, meta=SHAPE)
            loaded = twinsnn.load(path)
            with pytest.raises(CheckpointError, match="without model="):
                twinsnn.load(path, model=own_spiking_network())
        if name in BITWISE:
            assert torch.equal(logits(loaded, x), logits(net, x)), name
        else:
            torch.testing.assert_close(logits(loaded, x), logits(net, x), rtol=1e-4, atol=1e-4)


def test_format_names_and_options_are_checked(tmp_path):
    net = own_spiking_network()
    with pytest.raises(ConfigError, match="format must be one of"):
        twinsnn.export(net, tmp_path / "m.tnn", format="onnx")
    with pytest.raises(ConfigError, match="takes no option fold"):
        twinsnn.export(net, tmp_path / "m.tnn", fold="weights")
    for name in ("nir", "nir-portable"):
        with pytest.raises(ConfigError, match="needs the input's shape"):
            twinsnn.export(net, tmp_path / "m.nir", format=name)
    assert format_of(tmp_path / "model.bin") is FORMATS["packed"]
    assert not (tmp_path / "m.tnn").exists()
    # a .nir file names the exact graph, whatever a file already at the path holds
    portable = twinsnn.export(net, tmp_path / "m.nir", format="nir-portable", meta=SHAPE)
    assert format_of(portable) is FORMATS["nir-portable"]
    assert graph_format(twinsnn.export(net, portable, meta=SHAPE)) == NIR_FORMAT


# ---- files written by twinsnn 0.2.0 ----------------------------------------------------

def previous() -> dict:
    return json.loads((PREVIOUS / "expected.json").read_text())


@pytest.mark.parametrize("name", ["model.tnn", "model.safetensors"])
def test_files_of_twinsnn_0_2_0_load_and_evaluate_as_they_did(name, tiny_data, capsys):
    """A network trained and written by twinsnn 0.2.0 (``tests/data/v0.2.0/README.md``): the
    same logits from ``twinsnn.load``, the same accuracy from ``twinsnn eval``."""
    x = ((torch.arange(4 * 784) * 37 % 101).float() / 50 - 1).view(4, 1, 28, 28)
    net = twinsnn.load(PREVIOUS / name)
    assert logits(net, x).tolist() == previous()["logits"][name]
    got = cli_eval(capsys, PREVIOUS / name, tiny_data)
    assert got["accuracy"] == previous()["eval_accuracy"][name]


def test_a_graph_of_twinsnn_0_2_0_evaluates_as_it_did(tiny_data, tmp_path, capsys):
    """0.2.0's NIR export is the ``nir`` format's, unchanged (``twinsnn-nir/1``, BatchNorm
    folded into the neurons): written by it, the graph scores what the saved network scored."""
    net = twinsnn.load(PREVIOUS / "model.safetensors")
    path = write_graph(net, net.meta, tmp_path / "old.nir")
    assert graph_format(path) == NIR_FORMAT == "twinsnn-nir/1"
    got = cli_eval(capsys, path, tiny_data)
    assert got["accuracy"] == previous()["eval_accuracy"]["model.safetensors"]
