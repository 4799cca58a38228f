"""Synaptic operations, weight storage and energy against closed forms and brute force."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twinsnn.analysis import (ENERGY_PJ, fan_out, format_operations, operations,
                              plot_operations, recording, spiking_blocks, weight_storage)
from twinsnn.errors import ConfigError


def test_fan_out_of_a_padded_conv_closed_form():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    fan = fan_out(conv, (1, 4, 4))
    want = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]) * 2
    assert torch.equal(fan[0], want.double())
    with torch.no_grad():
        conv.weight[1] = 0.0  # a zero weight is no synapse
        conv.weight[0, 0, 1, 1] = 0.0
    assert fan_out(conv, (1, 4, 4))[0, 1, 1] == 8


def test_fan_out_into_a_linear_layer_counts_nonzero_weights():
    linear = nn.Linear(12, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([1.0, 0.0, -1.0]).repeat(12).view(3, 12))
        linear.weight[0, 0] = 0.0
    fan = fan_out(linear, (3, 2, 2))
    assert fan.shape == (3, 2, 2)
    assert fan.flatten().tolist() == [2.0] + [0.0, 3.0, 3.0] * 3 + [0.0, 3.0]


@pytest.mark.parametrize("mode", ["none", "ternary"])
def test_synops_equal_brute_force_over_the_spikes(spread_net, mode):
    model = spread_net(mode)
    blocks = spiking_blocks(model)
    spikes = {}
    for name, block in blocks:
        block.neuron.register_forward_hook(lambda _m, _i, out, n=name: spikes.setdefault(n, out))
    x = torch.randn(3, 1, 28, 28)
    with recording(model) as rec, torch.no_grad():
        model(x)
    ops = operations(model, rec)
    rows = {r["layer"]: r for r in ops["layers"]}
    synapses = [b.synapse for _, b in blocks[1:]] + [model.out]
    pooled = {"convs.1", "convs.2"}  # each followed by a 2x2 average pool
    for (name, block), synapse, (next_name, _) in zip(blocks, synapses, blocks[1:] + [("out", 0)]):
        s = spikes[name].flatten(0, 1).double()
        if name in pooled:
            s = F.avg_pool2d(s, 2, divisor_override=1)
        mask = (synapse.weight != 0).double()
        if isinstance(synapse, nn.Conv2d):
            events = F.conv2d(s, mask, padding=1)
        else:
            events = F.linear(s.flatten(1), mask)
        assert rows[next_name]["synops"] == pytest.approx(events.sum().item() / 3, rel=1e-12)
        assert rows[name]["firing_rate"] == pytest.approx(spikes[name].mean().item())
    first = rows["convs.0"]
    assert first["macs"] == first["ann_macs"] == 16 * 28 * 28 * 9 and first["synops"] == 0
    assert rows["convs.2"]["ann_macs"] == 64 * 14 * 14 * 32 * 9
    assert rows["out"]["ann_macs"] == 10 * 64
    total = ops["total"]
    energy = ops["energy_pj"]
    assert energy["snn"] == pytest.approx(ENERGY_PJ["mac"] * total["macs"]
                                          + ENERGY_PJ["acc"] * total["synops"])
    assert energy["ann"] == pytest.approx(ENERGY_PJ["mac"] * total["ann_macs"])
    assert ("snn_integer" in energy) == (mode == "ternary")
    assert "Horowitz" in format_operations(ops)


def test_weight_storage():
    codes = torch.tensor([[1.0, 0.0, -1.0, 1.0, 0.0]] * 3)
    assert weight_storage(codes) == {"weights": 15, "zero_weights": 0.4, "mode": "ternary",
                                     "bytes_float32": 60, "bytes_packed": 4}
    scaled = weight_storage(codes * torch.tensor([[0.5], [0.25], [2.0]]))
    assert scaled["bytes_packed"] == 4 + 3 * 4
    assert weight_storage(codes * 0.5)["bytes_packed"] == 4 + 4
    binary = weight_storage(torch.ones(3, 11) - 2 * (torch.rand(3, 11) < 0.5))
    assert binary["mode"] == "binary" and binary["bytes_packed"] == math.ceil(33 / 8)
    dense = weight_storage(torch.tensor([[0.3, -0.7], [0.1, 0.0]]))
    assert dense["mode"] == "float32" and dense["bytes_packed"] == 16


def test_plot_operations(tmp_path, spread_net):
    model = spread_net()
    with recording(model) as rec, torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    out = plot_operations(operations(model, rec), tmp_path / "ops.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ops.png"]
    with pytest.raises(ConfigError, match=".png"):
        plot_operations(operations(model, rec), tmp_path / "ops.nope")
    assert [p.name for p in tmp_path.iterdir()] == ["ops.png"]
