import pytest
import torch
from torch import nn

from twinsnn.config import ModelConfig, QuantConfig
from twinsnn.errors import ConfigError
from twinsnn.models import cifarnet
from twinsnn.quant import (baked, binarize, compress, compressed_layers, decompress, is_compressed,
                           pack_binary, pack_ternary, quantize, quantizer, set_compression,
                           ternarize, ternary_threshold,
                           unpack_binary, unpack_ternary, weight_sparsity)


def small_net(image_size=(28, 28)):
    return cifarnet(ModelConfig(width=0.125), 10, 1, image_size)


def test_ternarize_eq6_exact_delta_boundaries():
    w = torch.tensor([-0.5, -0.125, -0.1249, 0.0, 0.1249, 0.125, 0.1251, 3.0])
    expected = torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert torch.equal(ternarize(w, 0.125), expected)


def test_ternarize_delta_point_one_in_weight_dtype():
    tenth = torch.tensor(0.1)  # float32 rounding of 0.1: |w| = delta exactly
    w = torch.stack([-tenth, tenth, torch.nextafter(tenth, torch.tensor(1.0)),
                     -torch.nextafter(tenth, torch.tensor(1.0)), tenth / 2])
    assert torch.equal(ternarize(w, 0.1), torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0]))
    tenth64 = torch.tensor([0.1, -0.1], dtype=torch.float64)
    assert torch.equal(ternarize(tenth64, 0.1), torch.zeros(2, dtype=torch.float64))


def test_ternary_values_only_and_binary_has_no_zeros():
    w = torch.randn(1000) * 0.2
    w[:10] = 0.0
    assert set(ternarize(w).unique().tolist()) <= {-1.0, 0.0, 1.0}
    b = binarize(w)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(binarize(torch.tensor([0.0, -0.0, -1e-9, 2.0])),
                       torch.tensor([1.0, 1.0, -1.0, 1.0]))


@pytest.mark.parametrize("fn", [lambda w: ternarize(w, 0.1), binarize,
                                lambda w: quantize(w, "ternary", 0.1, "channel")])
def test_straight_through_gradient(fn):
    w = (torch.randn(4, 3) * 0.2).requires_grad_()
    upstream = torch.randn(4, 3)
    fn(w).backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_scales_are_mean_abs_of_kept_weights():
    w = torch.tensor([[0.5, -0.3, 0.05], [0.0, 0.01, -0.02]])
    by_channel = quantize(w, "ternary", 0.1, "channel")
    assert torch.allclose(by_channel, torch.tensor([[0.4, -0.4, 0.0], [0.0, 0.0, 0.0]]))
    by_layer = quantize(w, "ternary", 0.1, "layer")
    assert torch.allclose(by_layer, torch.tensor([[0.4, -0.4, 0.0], [0.0, 0.0, 0.0]]))


def test_compress_keeps_ends_full_precision_and_is_idempotent():
    model = small_net()
    names = compress(model, "ternary", 0.1)
    assert "convs.0.synapse" not in names and "out" not in names
    assert names == ["convs.1.synapse", "convs.2.synapse", "convs.3.synapse",
                     "convs.4.synapse", "fcs.0.synapse", "fcs.1.synapse"]
    original = model.convs[1].synapse.parametrizations.weight.original
    assert compress(model, "ternary", 0.05) == names
    assert len(model.convs[1].synapse.parametrizations.weight) == 1
    assert model.convs[1].synapse.parametrizations.weight.original is original
    assert is_compressed(model) and compressed_layers(model) == names
    assert isinstance(model.convs[0].synapse.weight, nn.Parameter)
    assert set(model.convs[1].synapse.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert len(compress(small_net(), "binary", full_precision_ends=False)) == 8


def test_sparsity_reports_zero_fraction():
    model = small_net()
    compress(model, "ternary", 0.1)
    sparsity = weight_sparsity(model)
    assert list(sparsity) == compressed_layers(model)
    w = model.convs[1].synapse.parametrizations.weight.original
    assert sparsity["convs.1.synapse"] == pytest.approx((w.abs() <= 0.1).float().mean().item())
    compress(model, "binary")
    assert all(v == 0.0 for v in weight_sparsity(model).values())


def test_schedule_switches_on_exactly_at_start_epoch():
    cfg = QuantConfig(mode="ternary", start_epoch=3, delta=0.1, scale="none")
    model = small_net()
    assert [set_compression(model, cfg, e) for e in range(5)] == [False, False, False, True,
                                                                  True]
    assert is_compressed(model)
    assert not set_compression(model, cfg, 2) and not is_compressed(model)
    never = QuantConfig(mode="none", start_epoch=0)
    assert not set_compression(model, never, 10) and not is_compressed(model)


def test_adam_state_survives_the_switch():
    torch.manual_seed(0)
    model = small_net((8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 8, 8)
    param = model.convs[1].synapse.weight

    def step():
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()

    step()
    state = optimizer.state[param]
    exp_avg = state["exp_avg"].clone()
    set_compression(model, QuantConfig(mode="ternary", start_epoch=1, delta=0.01, scale="none"), 1)
    latent = model.convs[1].synapse.parametrizations.weight.original
    assert latent is param
    assert optimizer.state[latent] is state and torch.equal(state["exp_avg"], exp_avg)
    before = latent.detach().clone()
    step()
    assert int(state["step"]) == 2 and latent.grad is not None
    assert not torch.equal(latent.detach(), before)
    decompress(model)
    assert model.convs[1].synapse.weight is param


def test_baked_copy_has_plain_quantized_weights():
    model = small_net((8, 8)).eval()
    compress(model, "ternary", 0.01, scale="channel")
    plain = baked(model)
    assert not is_compressed(plain) and is_compressed(model)
    assert isinstance(plain.convs[1].synapse.weight, nn.Parameter)
    assert torch.equal(plain.convs[1].synapse.weight, model.convs[1].synapse.weight)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    assert type(plain.convs[1].synapse) is nn.Conv2d
    assert set(k for k in plain.state_dict() if "parametrizations" in k) == set()
    decompress(model)  # the original still works on its own
    assert isinstance(model.convs[1].synapse.weight, nn.Parameter)


def test_bad_mode_or_scale_raises():
    with pytest.raises(ConfigError):
        compress(small_net(), "quaternary")
    with pytest.raises(ConfigError):
        compress(small_net(), "ternary", scale="row")


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 9, 1001])
def test_pack_round_trip(n):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(-1, 2, (n,), generator=g, dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 3) // 4
    assert torch.equal(unpack_ternary(packed, n), codes)
    signs = codes.clamp(min=0) * 2 - 1
    packed = pack_binary(signs)
    assert packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_binary(packed, n), signs)


def test_pack_layout_and_invalid_codes():
    assert pack_ternary(torch.tensor([1, -1, 0, 1], dtype=torch.int8)).item() == 0b01_00_11_01
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([2, 0], dtype=torch.int8))
    with pytest.raises(ValueError):
        unpack_ternary(torch.tensor([0b10], dtype=torch.uint8), 1)
    with pytest.raises(ValueError):
        unpack_ternary(torch.tensor([0, 0], dtype=torch.uint8), 4)


def test_threshold_rules_on_hand_made_weights():
    w = torch.tensor([[0.4, -0.2, 0.0, 0.2],     # mean |w| 0.2
                      [0.04, -0.02, 0.01, 0.01]])  # mean |w| 0.02; layer mean 0.11
    assert ternary_threshold(w, 0.1) == 0.1  # eq. 6: D is delta itself
    layer = ternary_threshold(w, 0.7, "mean_abs")
    assert layer.shape == () and torch.isclose(layer, torch.tensor(0.7 * 0.11))
    channel = ternary_threshold(w, 0.5, "mean_abs", "channel")
    assert channel.shape == (2, 1)
    assert torch.allclose(channel, torch.tensor([[0.1], [0.01]]))
    # one D for the layer zeros the whole small channel; one per channel keeps its largest
    assert torch.equal(quantize(w, "ternary", 0.7, delta_rule="mean_abs"),
                       torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(quantize(w, "ternary", 0.5, delta_rule="mean_abs", delta_per="channel"),
                       torch.tensor([[1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 0.0]]))


def test_threshold_per_channel_of_a_conv_weight_and_boundary():
    w = torch.zeros(2, 1, 2, 2)
    w[0] = torch.tensor([[0.3, -0.1], [0.1, 0.3]])  # mean |w| 0.2 -> D = 0.1 at factor 0.5
    w[1] = torch.tensor([[1.0, -2.0], [0.5, 0.5]])  # mean |w| 1.0 -> D = 0.5
    d = ternary_threshold(w, 0.5, "mean_abs", "channel")
    assert d.shape == (2, 1, 1, 1)
    codes = quantize(w, "ternary", 0.5, delta_rule="mean_abs", delta_per="channel")
    # |w| = D exactly maps to 0, as in eq. 6
    assert torch.equal(codes[1], torch.tensor([[[1.0, -1.0], [0.0, 0.0]]]))
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_mean_abs_threshold_follows_the_weights_and_passes_gradients_straight():
    w = (torch.randn(8, 4) * 0.03).requires_grad_()
    before = quantize(w, "ternary", 0.7, delta_rule="mean_abs")
    assert 0.2 < (before == 0).float().mean() < 0.6  # about 0.7 mean|w| zeros ~40%
    assert torch.equal(quantize(w * 10, "ternary", 0.7, delta_rule="mean_abs"), before)
    upstream = torch.randn(8, 4)
    quantize(w, "ternary", 0.7, delta_rule="mean_abs", delta_per="channel").backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_threshold_rule_errors():
    with pytest.raises(ConfigError, match="delta_rule must be one of"):
        ternary_threshold(torch.ones(2, 2), 0.1, "median")
    with pytest.raises(ConfigError, match="needs quant.delta_rule=mean_abs"):
        compress(small_net(), "ternary", 0.1, delta_per="channel")
    with pytest.raises(ConfigError, match="delta_per must be one of"):
        compress(small_net(), "ternary", 0.7, delta_rule="mean_abs", delta_per="row")


def test_set_compression_uses_the_configured_rule():
    model = small_net()
    cfg = QuantConfig(mode="ternary", start_epoch=0, delta=0.7, delta_rule="mean_abs",
                      delta_per="channel", scale="none")
    set_compression(model, cfg, 0)
    q = quantizer(model.convs[1].synapse)
    assert (q.delta_rule, q.delta_per, q.delta) == ("mean_abs", "channel", 0.7)
    sparsity = weight_sparsity(model)
    assert all(0.2 < v < 0.7 for v in sparsity.values()), sparsity


def test_auto_scale_takes_each_layers_scale():
    """quant.scale=auto compresses each layer with its own scale (safeguards.scales)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
    cfg = QuantConfig(mode="ternary", start_epoch=0, delta=0.5, delta_rule="mean_abs")
    with pytest.raises(ConfigError, match="quant.scale=auto needs each layer's scale"):
        set_compression(model, cfg, 0)
    set_compression(model, cfg, 0, scales={"1": "none", "2": "layer"})
    assert (quantizer(model[1]).scale, quantizer(model[2]).scale) == ("none", "layer")
    assert set(model[1].weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
    kept = model[2].weight[model[2].weight != 0].abs()
    assert torch.allclose(kept, kept[0].expand_as(kept)) and kept[0] != 1.0
