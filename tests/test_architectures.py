"""Every registered architecture through the whole pipeline, as timm tests every model: a tiny
TNA run whose base goes ternary, the packed export and its reload, the NIR graph read back
by ``nir`` and by twinsnn, the integer path and the operation report, each agreeing with
the float network on a batch of real images (the tiny training set's, where Fashion-MNIST
is not installed)."""
import json

import nir
import pytest
import torch

import twinsnn
from twinsnn.cli import main
from twinsnn.config import DataConfig, ModelConfig
from twinsnn.data import fashion_mnist
from twinsnn.data.transforms import Preprocess
from twinsnn.integer import integer_model
from twinsnn.models import MODELS
from twinsnn.nir import read_graph
from twinsnn.quant import SYNAPSES, compressed_layers
from twinsnn.structure import input_pools, layers, readout


def real_batch(folder, n=64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalized Fashion-MNIST test images (the tiny set's where the real one is not
    installed) and their labels."""
    real = fashion_mnist.locate(None) is not None
    cfg = DataConfig(dir=None if real else str(folder), verify=real)
    _, test, _ = fashion_mnist.load(cfg)
    data = type("Stats", (), {"mean": fashion_mnist.MEAN, "std": fashion_mnist.STD,
                              "augmentation": fashion_mnist.AUGMENTATION})
    return Preprocess(data, False)(test.x[:n]), test.y[:n]


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_architecture_through_the_pipeline(arch, tiny_fmnist, tmp_path, capsys):
    run = twinsnn.fit(arch, config="fmnist-cpu", progress=False, out_dir=str(tmp_path),
                      name=arch, dir=str(tiny_fmnist), verify=False, val_size=40, width=0.0625,
                      timesteps=2, epochs=2, batch_size=32, strategy="tna", mode="ternary",
                      start_epoch=1, delta_rule="mean_abs", delta=0.5, compile=False)
    base = run.model.eval()
    synapses = [n for n, m in base.named_modules() if isinstance(m, SYNAPSES)]
    assert compressed_layers(base) == synapses[1:-1]  # first and last stay full precision
    x, _ = real_batch(tiny_fmnist)
    with torch.no_grad():
        want = twinsnn.logits_of(base(x))

    ckpt = tmp_path / arch / "checkpoint.pt"
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.tnn")]) == 0
    loaded = twinsnn.load(tmp_path / "m.tnn")
    assert main(["export", str(ckpt), "--format", "nir", "-o", str(tmp_path / "m.nir")]) == 0
    graph = nir.read(tmp_path / "m.nir")
    assert isinstance(graph, nir.NIRGraph)
    info = json.loads(graph.metadata["twinsnn"])
    assert info["normalization"] == {"mean": list(fashion_mnist.MEAN),
                                     "std": list(fashion_mnist.STD)}
    from_graph, _ = read_graph(tmp_path / "m.nir")
    integer = integer_model(loaded)
    with torch.no_grad():
        assert torch.equal(twinsnn.logits_of(loaded(x)), want)
        assert torch.equal(twinsnn.logits_of(from_graph(x)), want)
        assert torch.equal(twinsnn.logits_of(integer(x)).argmax(1), want.argmax(1))

    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.tnn"), "--integer", "--json",
                 "--data-dir", str(tiny_fmnist)]) == 0
    rows = {r["layer"]: r for r in json.loads(capsys.readouterr().out)["operations"]["layers"]}
    assert list(rows) == [n.name for n in layers(base)] + [readout(base).name]
    hidden = [n.name for n in layers(base) if not input_pools(base, n)[2]]
    assert all(rows[n]["mode"] == "ternary" and rows[n]["synops"] > 0 for n in hidden)


def test_residual_network_adds_spike_counts():
    """SEW ResNet-19: 8 blocks, each adding its two branches' spikes; the stages that
    downsample have a spiking 1x1 shortcut, the others pass their input on."""
    net = twinsnn.build_model(ModelConfig(arch="sew_resnet19", width=0.0625, timesteps=2), 10, 1,
                              (28, 28))  # training mode: batch statistics, so layers fire
    adds = [n for n in net.nodes if n.kind == "add"]
    assert len(adds) == 8 and all(len(n.inputs) == 2 for n in adds)
    assert [n.name for n in layers(net) if n.name.endswith("shortcut")] == \
        ["stages.1.0.shortcut", "stages.2.0.shortcut"]
    assert adds[0].inputs == ("stages.0.0.conv2", "stem")
    spikes = {}
    for node in layers(net):
        node.module.neuron.register_forward_hook(
            lambda _m, _i, out, name=node.name: spikes.__setitem__(name, out))
    with torch.no_grad():
        net(torch.randn(4, 1, 28, 28) * 3)
    first = spikes["stages.0.0.conv2"] + spikes["stem"]  # what the second block reads
    assert set(first.unique().tolist()) == {0.0, 1.0, 2.0}
