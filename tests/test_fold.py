"""BatchNorm folding and integer inference against hand-made tensors and the float model."""
import math

import pytest
import torch
from torch import nn

from twinsnn.errors import CheckpointError, ConfigError
from twinsnn.fold import FoldedBlock, batchnorm_affine, codes_and_scale, fold_layers
from twinsnn.integer import IntegerLIF, decay_shift, integer_model, thresholds
from twinsnn.neurons import lif


def fma(y, k, h):
    """``k y + h`` rounded once to float32, per channel (dim 1)."""
    shape = (-1,) + (1,) * (y.dim() - 2)
    return (y.double() * k.double().view(shape) + h.double().view(shape)).float()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="PyTorch's BatchNorm rounds k y + h once only where it has FMA")
@pytest.mark.parametrize("shape, channels_last", [((50, 64, 7, 7), False),
                                                  ((50, 64, 7, 7), True),
                                                  ((3000, 100), False)])
def test_batchnorm_affine_is_what_pytorch_applies(shape, channels_last):
    """Bitwise on real-valued inputs over many channels: a ``k`` one ulp off (as
    ``1 / sqrt(var + eps) * gamma`` is in a third of the channels) fails here."""
    torch.manual_seed(0)
    channels = shape[1]
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.01, 2)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    y = torch.randn(shape) * 10
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    k, h = batchnorm_affine(bn, channels)
    assert k.dtype == h.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(bn(y), fma(y, k, h))


def test_batchnorm_affine_of_no_norm_is_the_identity():
    k, h = batchnorm_affine(nn.Identity(), 4)
    assert torch.equal(k, torch.ones(4)) and torch.equal(h, torch.zeros(4))


def test_codes_and_scale_recognizes_only_scaled_codes():
    codes = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, 1.0]])
    found = codes_and_scale(codes * torch.tensor([[0.5], [3.0], [2.0]]))
    assert torch.equal(found[0], codes.to(torch.int8))
    assert found[1].tolist() == [0.5, 0.0, 2.0]
    assert codes_and_scale(torch.tensor([[0.5, -0.25]])) is None


def test_compressed_blocks_keep_codes_and_flip_signs_for_negative_scales(spread_net):
    model = spread_net()
    folded = fold_layers(model)
    assert list(folded) == [f"convs.{i}" for i in range(5)] + ["fcs.0", "fcs.1"]
    folded, blocks = list(folded.values()), list(model.convs) + list(model.fcs)
    assert not folded[0].compressed and all(f.compressed for f in folded[1:])
    assert [f.sums_pool for f in folded] == [False, False, True, True, False, False, False]
    for block, f in zip(blocks[1:], folded[1:]):
        assert set(f.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert (f.gain > 0).all()
        k, _ = batchnorm_affine(block.norm, len(f.gain))
        latent = torch.sign(block.synapse.weight.detach().double())
        flipped = k < 0
        assert flipped.any() and (k == 0).any()
        shape = (-1,) + (1,) * (latent.dim() - 1)
        sign = torch.where(flipped, -1.0, 1.0).double().view(shape)
        want = torch.where((k == 0).view(shape), 0.0, latent * sign)
        assert torch.equal(f.weight, want)


def test_folded_block_reproduces_the_current(spread_net):
    """gain * (V z) + shift equals BatchNorm(conv(x)) for spikes x, with z the pool's sum."""
    model = spread_net()
    block, f = model.convs[2], fold_layers(model)["convs.2"]
    spikes = (torch.rand(4, model.convs[1].synapse.out_channels, 28, 28) < 0.3).float()
    with torch.no_grad():
        want = block.norm(block.synapse(nn.functional.avg_pool2d(spikes, 2)))
        z = nn.functional.avg_pool2d(spikes, 2, divisor_override=1).double()
        sums = nn.functional.conv2d(z, f.weight, padding=1)
    got = f.gain.view(-1, 1, 1) * sums + f.shift.view(-1, 1, 1)
    assert torch.allclose(got.float(), want, atol=1e-5)


def test_thresholds_closed_form():
    f = FoldedBlock(None, torch.tensor([0.5, 0.25], dtype=torch.float64),
                    torch.tensor([0.25, -0.125], dtype=torch.float64), True, False)
    table = thresholds(f, 1.0, 1, 3)
    # K[n] = ceil((theta 2^n - b (2^(n+1) - 1)) / g)
    want = [[math.ceil((2**n - b * (2 ** (n + 1) - 1)) / g) for g, b in ((0.5, 0.25), (0.25, -0.125))]
            for n in range(3)]
    assert table.tolist() == want == [[2, 5], [3, 10], [5, 20]]


def test_integer_neuron_equals_eq1_including_ties():
    """Dyadic gain and shift keep the float computation exact, ties included."""
    torch.manual_seed(0)
    gain = torch.tensor([0.5, 0.25, 2.0, 1.0], dtype=torch.float64)
    shift = torch.tensor([0.5, -0.25, -1.0, 0.0], dtype=torch.float64)
    f = FoldedBlock(None, gain, shift, True, False)
    sums = torch.randint(-6, 7, (5, 256, 4)).float()
    sums[0, 0] = torch.tensor([1.0, 5.0, 1.0, 1.0])  # u[0] = theta exactly: fires (>=)
    sums[0, 1] = torch.tensor([0.0, 4.0, 0.0, 0.0])  # just below: silent
    currents = sums * gain.float() + shift.float()
    assert currents[0, 0].tolist() == [1.0] * 4
    got = IntegerLIF(thresholds(f, 1.0, 1, 5), 1)(sums)
    assert torch.equal(got, lif(currents, 0.5, 1.0))
    assert got[0, 0].tolist() == [1.0] * 4 and got[0, 1].tolist() == [0.0] * 4
    # a = 1 (k = 0) and a = 1/4 (k = 2)
    for decay in (1.0, 0.25):
        k = decay_shift(decay)
        got = IntegerLIF(thresholds(f, 1.0, k, 5), k)(sums)
        assert torch.equal(got, lif(currents, decay, 1.0))


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.75, 1.5])
def test_integer_inference_needs_a_power_of_two_decay(decay):
    with pytest.raises(ConfigError, match="model.decay"):
        decay_shift(decay)


@pytest.mark.parametrize("mode,scale", [("ternary", "none"), ("ternary", "channel"),
                                        ("binary", "none")])
def test_integer_model_matches_the_float_model(spread_net, mode, scale):
    model = spread_net(mode, scale)
    net = integer_model(model)
    assert all(isinstance(b.neuron, IntegerLIF) for b in list(net.convs)[1:] + list(net.fcs))
    assert set(net.convs[1].synapse.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    assert all(p.divisor_override == 1 for p in net.pools)  # they feed compressed layers
    assert model.convs[1].norm is not nn.Identity  # the original is untouched


def test_integer_model_refuses_full_precision_layers(spread_net):
    with pytest.raises(CheckpointError, match="convs.1 has full-precision weights"):
        integer_model(spread_net("none"))
