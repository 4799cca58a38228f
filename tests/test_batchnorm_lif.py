"""BatchNorm fused into the LIF layer (``neurons.batchnorm_lif``) against ``nn.BatchNorm``
followed by the LIF, on hand-made tensors: spikes, gradients and running statistics."""
import copy

import pytest
import torch
from torch import nn

from conftest import slow_when_compiled
from twinsnn.analysis import firing_rates
from twinsnn.config import ModelConfig
from twinsnn.distributed import SyncedBatchNorm
from twinsnn.models import cifarnet
from twinsnn.neurons import LIF, SURROGATES, batchnorm_lif, fusable, lif, set_kernel


def _norm(channels: int, dims: int, momentum=0.1) -> nn.Module:
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, momentum=momentum)
    with torch.no_grad():  # away from the init so that both affine terms matter
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-0.5, 1.0)
        norm.running_mean.uniform_(-0.3, 0.3)
        norm.running_var.uniform_(0.5, 2.0)
    return norm.double()


def _unfused(x_tb, norm, surrogate, kernel="eager"):
    current = norm(x_tb.flatten(0, 1)).unflatten(0, x_tb.shape[:2])
    return lif(current, 0.5, 1.0, SURROGATES[surrogate], kernel)


@pytest.mark.parametrize("kernel", slow_when_compiled(["eager", "compiled"]))
@pytest.mark.parametrize("shape, channels_last", [((4, 6, 5, 3, 3), False),
                                                   ((4, 6, 5, 3, 3), True), ((4, 6, 5), False)],
                         ids=["conv", "conv-channels-last", "fc"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("surrogate", ["boxcar", "atan"])
def test_fused_equals_batchnorm_then_lif(kernel, shape, channels_last, training, surrogate):
    """Same spikes, the same gradients for x, gamma and beta (float64), the same running
    statistics, in training (batch statistics) and eval (running statistics) mode."""
    torch.manual_seed(0)
    norm = _norm(shape[2], len(shape) - 3).train(training)
    ref_norm = copy.deepcopy(norm)
    x = torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3
    if channels_last:  # as a conv's channels-last output, unfolded
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    x.requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    weights = torch.randn(*shape, dtype=torch.float64)

    spikes = batchnorm_lif(x, norm, 0.5, 1.0, SURROGATES[surrogate], kernel == "compiled")
    ref = _unfused(ref_x, ref_norm, surrogate)
    assert torch.equal(spikes, ref) and 0 < spikes.mean() < 1
    (spikes * weights).sum().backward()
    (ref * weights).sum().backward()
    assert x.grad.stride() == x.stride()
    for ours, theirs in [(x.grad, ref_x.grad), (norm.weight.grad, ref_norm.weight.grad),
                         (norm.bias.grad, ref_norm.bias.grad)]:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(norm.buffers(), ref_norm.buffers()):
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=0)
    assert int(norm.num_batches_tracked) == int(training)


def test_cumulative_running_average_when_momentum_is_none():
    torch.manual_seed(1)
    norm = _norm(3, 1, momentum=None)
    ref_norm = copy.deepcopy(norm)
    for _ in range(3):
        x = torch.randn(2, 8, 3, dtype=torch.float64) * 2 + 1
        batchnorm_lif(x, norm)
        _unfused(x, ref_norm, "boxcar")
    assert int(norm.num_batches_tracked) == 3
    torch.testing.assert_close(norm.running_mean, ref_norm.running_mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(norm.running_var, ref_norm.running_var, rtol=1e-14, atol=0)


def test_bfloat16_input_gives_the_float32_spikes_and_rounded_gradient():
    """Under bf16 autocast a conv hands bf16 x to the fused layer: the current is computed in
    float32 from the exactly upcast x, so the spikes are the float32 ones (in bf16) and the
    gradients those of float32 (x's rounded to bf16), up to the last bit of the variance,
    which BatchNorm's statistics kernel sums differently for bf16 input."""
    torch.manual_seed(2)
    norm = _norm(4, 2).float()
    wide_norm = copy.deepcopy(norm)
    x = (torch.randn(3, 5, 4, 2, 2) * 1.5).to(torch.bfloat16).requires_grad_()
    wide = x.detach().float().requires_grad_()
    weights = torch.randn(3, 5, 4, 2, 2).to(torch.bfloat16)
    spikes = batchnorm_lif(x, norm)
    wide_spikes = batchnorm_lif(wide, wide_norm)
    assert spikes.dtype == torch.bfloat16 and torch.equal(spikes.float(), wide_spikes)
    (spikes * weights).sum().backward()
    (wide_spikes * weights.float()).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad, wide.grad.to(torch.bfloat16), rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, wide_norm.weight.grad, rtol=1e-5, atol=1e-6)


def test_only_plain_affine_batchnorms_with_running_statistics_are_fused():
    assert fusable(nn.BatchNorm2d(3)) and fusable(nn.BatchNorm1d(3))
    assert not fusable(nn.BatchNorm2d(3, affine=False))
    assert not fusable(nn.BatchNorm2d(3, track_running_stats=False))
    assert not fusable(SyncedBatchNorm(3))
    assert not fusable(nn.Identity())


@pytest.mark.parametrize("norm", [nn.Identity(), nn.BatchNorm1d(3, affine=False)])
@pytest.mark.parametrize("fuse_norm", [False, True])
def test_a_norm_that_is_not_fused_runs_before_the_neuron(norm, fuse_norm):
    torch.manual_seed(3)
    x = torch.randn(4, 6, 3) + 0.8
    expected = lif(norm(x.flatten(0, 1)).unflatten(0, (4, 6)), 0.5, 1.0)
    assert torch.equal(LIF(fuse_norm=fuse_norm)(x, norm), expected)


@pytest.mark.slow
def test_fused_network_fires_and_learns_as_the_unfused_one():
    """A whole CIFARNet: the same logits, gradients and firing rates (read by forward hooks on
    the neurons, which fire on the fused path as well)."""
    torch.manual_seed(4)
    unfused = cifarnet(ModelConfig(width=0.0625), 10, 3, (16, 16)).double()
    fused = set_kernel(copy.deepcopy(unfused), "compiled", fuse_norm=True)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64) * 3
    results = []
    for net in (fused, unfused):
        torch.manual_seed(5)  # the same dropout masks
        with firing_rates(net) as rates:
            logits = net(x)
            logits.square().sum().backward()
        results.append((logits, [p.grad for p in net.parameters()], rates))
    (logits, grads, rates), (ref_logits, ref_grads, ref_rates) = results
    assert torch.equal(logits, ref_logits)
    assert rates == ref_rates and 0 < rates["convs.1"] < 1
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
def test_the_norm_is_fused_in_training_only(training):
    # in evaluation the norm module runs, then the neurons: bit for bit an exported graph
    torch.manual_seed(6)
    norm = _norm(5, 2).train(training)
    calls = []
    norm.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 4, 5, 6, 6, dtype=torch.float64) * 2 + 1
    expected = lif(norm(x.flatten(0, 1)).unflatten(0, (3, 4)), 0.5, 1.0, kernel="compiled")
    spikes = LIF(kernel="compiled", fuse_norm=True)(x, norm)
    assert len(calls) == 1 + (not training)
    if not training:
        assert torch.equal(spikes, expected)
