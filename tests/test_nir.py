"""NIR graphs out and back in: eq. 1 at a stated dt, BatchNorm folded, bad files refused."""
import json
import random

import nir
import numpy as np
import pytest
import torch

from twinsnn.cli import main
from twinsnn.errors import CheckpointError
from twinsnn.fold import batchnorm_affine, fold_layers
from twinsnn.nir import DT, GraphLIF, read_graph, to_graph, write_graph

META = {"model": dict(arch="cifarnet", num_classes=10, in_channels=1, width=0.125,
                      image_size=[28, 28], timesteps=5),
        "data": {"name": "fashion-mnist", "mean": [0.286], "std": [0.353]}, "config": {}}
HIDDEN = ["convs.1", "convs.2", "convs.3", "convs.4", "fcs.0", "fcs.1"]


@pytest.mark.parametrize("mode,scale", [("none", "none"), ("ternary", "none"),
                                        ("ternary", "channel"), ("binary", "none")])
def test_graph_folded_into_neurons_reproduces_the_model_bitwise(tmp_path, spread_net, mode, scale):
    model = spread_net(mode, scale)
    path = write_graph(model, META, tmp_path / "m.nir")
    graph = nir.read(path)
    kinds = [type(graph.nodes[n]).__name__ for n in ["input", "convs.0.synapse", "convs.0.lif",
                                                     "pools.0", "flatten", "fcs.0.synapse",
                                                     "out.synapse", "out.li", "output"]]
    assert kinds == ["Input", "Conv2d", "LIF", "SumPool2d" if mode != "none" else "AvgPool2d",
                     "Flatten", "Linear", "Affine", "LI", "Output"]
    for name in HIDDEN:
        weight = graph.nodes[f"{name}.synapse"].weight
        if mode == "none":
            assert np.array_equal(weight, dict(model.named_modules())[name].synapse.weight
                                  .detach().numpy())
        else:
            assert set(np.unique(weight)) <= {-1.0, 0.0, 1.0}
    loaded, meta = read_graph(path)
    assert meta == META
    x = torch.randn(6, 1, 28, 28)
    frames = torch.rand(5, 2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded(frames), model(frames))


def test_neuron_parameters_are_eq1_at_dt(spread_net):
    """Forward Euler of tau dv/dt = v_leak - v + r I at step dt: v[t] = (1 - dt/tau) v[t-1]
    + dt/tau (v_leak + r I) must be u[t] = a u[t-1] + gain I + shift, firing at >= theta."""
    model = spread_net()
    graph = to_graph(model, META)
    assert json.loads(graph.metadata["twinsnn"])["dt"] == DT
    f = fold_layers(model)["convs.1"]
    lif = graph.nodes["convs.1.lif"]
    ratio = DT / lif.tau
    assert np.all(1 - ratio == 0.5)
    assert np.array_equal((lif.r * ratio)[:, 0, 0], f.gain.numpy())
    assert np.array_equal((lif.v_leak * ratio)[:, 0, 0], f.shift.numpy())
    assert lif.v_threshold.dtype == np.float32 and np.all(lif.v_reset == 0)
    assert np.all(lif.v_threshold < 1.0) and np.all(np.float32(1.0) > lif.v_threshold)
    assert np.all(np.nextafter(lif.v_threshold, np.float32(2)) == 1.0)
    readout = graph.nodes["out.li"]
    assert np.all(1 - DT / readout.tau == model.readout_decay) and np.all(readout.v_leak == 0)


def test_graph_folded_into_weights(spread_net):
    model = spread_net()
    graph = to_graph(model, META, fold="weights")
    f1 = fold_layers(model)["convs.1"]
    k, h = batchnorm_affine(model.convs[0].norm, 16)
    conv0 = graph.nodes["convs.0.synapse"]
    want = (model.convs[0].synapse.weight.detach().double() * k.double().view(-1, 1, 1, 1)).float()
    assert np.array_equal(conv0.weight, want.numpy()) and np.array_equal(conv0.bias, h.numpy())
    conv1, lif1 = graph.nodes["convs.1.synapse"], graph.nodes["convs.1.lif"]
    assert set(np.unique(conv1.weight)) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(conv1.bias, (f1.shift / f1.gain).float().numpy())
    assert np.array_equal(np.nextafter(lif1.v_threshold[:, 0, 0], np.float32(np.inf)),
                          (1.0 / f1.gain).float().numpy())
    for node in (graph.nodes["convs.0.lif"], lif1):
        assert np.all(node.r * DT / node.tau == 1.0) and np.all(node.v_leak == 0)


def test_graph_neuron_fires_strictly_above_its_threshold():
    lif = GraphLIF(0.5, 1.0, 0.0, [0.75, 1.0], 0.0)
    current = torch.tensor([[[0.75, 1.0]], [[0.5, 0.5]]])
    assert lif(current)[:, 0].tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.fixture(scope="module")
def good_graph(tmp_path_factory):
    from twinsnn.config import ModelConfig
    from twinsnn.models import cifarnet
    torch.manual_seed(0)
    model = cifarnet(ModelConfig(width=0.0625), num_classes=10, in_channels=1,
                     image_size=(28, 28)).eval()
    return write_graph(model, META, tmp_path_factory.mktemp("nir") / "good.nir")


def _eval_fails(capsys, path, *extra):
    assert main(["eval", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twinsnn: error:") and str(path) in err[0]
    return err[0]


def test_damaged_nir_files_are_one_line_and_exit_2(tmp_path, capsys, good_graph):
    data = good_graph.read_bytes()
    for name, content in (("cut.nir", data[: len(data) // 2]), ("noise.nir", bytes(range(256)) * 8),
                          ("empty.nir", b"")):
        (tmp_path / name).write_bytes(content)
        assert "not a readable NIR file" in _eval_fails(capsys, tmp_path / name)
    assert "no such NIR file" in _eval_fails(capsys, tmp_path / "missing.nir")


def _rewrite(graph, path, nodes=None, edges=None, metadata=None):
    out = nir.NIRGraph(nodes=nodes or graph.nodes, edges=edges or graph.edges,
                       metadata=graph.metadata if metadata is None else metadata,
                       type_check=False)
    nir.write(path, out)
    return path


def test_graphs_not_shaped_like_twinsnn_are_one_line_and_exit_2(tmp_path, capsys, good_graph):
    graph = nir.read(good_graph)
    plain = nir.NIRGraph.from_list(nir.Affine(weight=np.ones((3, 4), np.float32),
                                              bias=np.zeros(3, np.float32)),
                                   nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                                           v_threshold=np.ones(3)))
    nir.write(tmp_path / "plain.nir", plain)
    assert "no 'twinsnn' metadata" in _eval_fails(capsys, tmp_path / "plain.nir")

    nodes = {**graph.nodes, "output2": nir.Output(output_type=np.array([10]))}
    branched = _rewrite(graph, tmp_path / "branch.nir", nodes,
                        edges=graph.edges + [("out.li", "output2")])
    assert "2 Output nodes" in _eval_fails(capsys, branched)

    nodes = dict(graph.nodes)
    nodes["out.li"] = nir.LIF(tau=np.full(10, 2 * DT), r=np.full(10, 2.0),
                               v_leak=np.zeros(10), v_threshold=np.ones(10))
    assert "LI readout" in _eval_fails(capsys, _rewrite(graph, tmp_path / "spiking.nir", nodes))

    nodes = dict(graph.nodes)
    nodes["convs.1.synapse"] = nir.Conv2d((28, 28), np.ones((16, 8, 3, 3), np.float32), 1, 1, 1,
                                          2, np.zeros(16, np.float32))  # groups=2 needs 16 in
    assert "do not fit together" in _eval_fails(capsys, _rewrite(graph, tmp_path / "shape.nir",
                                                                 nodes))

    bad_meta = {"twinsnn": json.dumps({"format": "twinsnn-nir/1", "dt": 0.0001})}
    assert "lacks" in _eval_fails(capsys, _rewrite(graph, tmp_path / "meta.nir", metadata=bad_meta))
    info = json.loads(graph.metadata["twinsnn"])
    endless = {"twinsnn": json.dumps({**info, "timesteps": 10**9})}
    assert "timesteps (1 to" in _eval_fails(capsys, _rewrite(graph, tmp_path / "t.nir",
                                                             metadata=endless))
    assert "not a NIR graph" in _eval_fails(capsys, good_graph, "--integer")


def test_export_refuses_a_graph_and_a_missing_file(tmp_path, capsys, good_graph):
    for source, fragment in ((good_graph, "a NIR graph already"),
                             (tmp_path / "missing.pt", "no such checkpoint")):
        assert main(["export", str(source), "--format", "nir", "-o", str(tmp_path / "x.nir")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "x.nir").exists()


def test_mutated_graph_files_load_or_fail_with_one_error(tmp_path, good_graph):
    """Bytes flipped anywhere in a graph file: it reads, or raises ``CheckpointError``."""
    data = good_graph.read_bytes()
    rng = random.Random(0)
    for i in range(40):
        raw = bytearray(data)
        for _ in range(rng.choice([1, 8, 64])):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path = tmp_path / f"mutant{i}.nir"
        path.write_bytes(bytes(raw))
        try:
            model, _ = read_graph(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:
            with torch.no_grad():
                assert model(torch.zeros(1, 1, 28, 28)).shape[1:] == (1, 10)
