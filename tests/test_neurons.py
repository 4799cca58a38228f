"""Eq. 1 (LIF with hard reset), the surrogates (eq. 4's boxcar, atan, sigmoid) and the three
LIF kernels, on hand-made tensors; every registered neuron against the neuron protocol."""
import copy
import math

import pytest
import torch
from torch import nn

from conftest import slow_when_compiled
from twinsnn.config import ModelConfig
from twinsnn.errors import ConfigError
from twinsnn.layers import over_time
from twinsnn.models import cifarnet
from twinsnn.neurons import (KERNELS, LIF, NEURONS, SURROGATES, Eq1, Neuron, atan, boxcar, lif,
                             lif_step, reset_states, set_kernel, sigmoid)

# The smooth steps whose derivatives the surrogates are (SpikingJelly's primitive functions,
# alpha 2 and 4), and the ramp whose slope is the boxcar.
PRIMITIVES = {
    "boxcar": lambda x: 0.5 * (x + 0.5).clamp(0.0, 1.0),
    "atan": lambda x: torch.atan(math.pi / 2 * 2.0 * x) / math.pi + 0.5,
    "sigmoid": lambda x: torch.sigmoid(4.0 * x),
}


def test_every_surrogate_has_a_primitive_here():
    assert set(PRIMITIVES) == set(SURROGATES)


def test_boxcar_values_eq4():
    u = torch.tensor([0.49, 0.5, 1.0, 1.5, 1.51, -3.0])
    assert boxcar(u - 1.0).tolist() == [0.0, 0.5, 0.5, 0.5, 0.0, 0.0]


def test_atan_and_sigmoid_closed_forms_by_hand():
    # atan: alpha / (2 (1 + (pi/2 alpha x)^2)) with alpha = 2 is 1 / (1 + (pi x)^2)
    x = torch.tensor([0.0, 1 / math.pi, -1 / math.pi, 2 / math.pi], dtype=torch.float64)
    torch.testing.assert_close(atan(x), torch.tensor([1.0, 0.5, 0.5, 0.2], dtype=torch.float64))
    # sigmoid: alpha s (1 - s) with alpha = 4, s = sigmoid(4x); s = 1/2 at 0, 1/(1+e^-4) at 1
    s1 = 1 / (1 + math.exp(-4.0))
    x = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(sigmoid(x), torch.tensor([1.0, 4 * s1 * (1 - s1),
                                                         4 * s1 * (1 - s1)], dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_is_the_derivative_of_its_primitive(name):
    """Central finite differences of the primitive, and its autograd derivative, away from
    the boxcar's two kinks."""
    x = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64)
    x = x[((x.abs() - 0.5).abs() > 1e-3)]
    h = 1e-6
    primitive, surrogate = PRIMITIVES[name], SURROGATES[name]
    fd = (primitive(x + h) - primitive(x - h)) / (2 * h)
    torch.testing.assert_close(surrogate(x), fd, rtol=1e-6, atol=1e-8)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(primitive(leaf).sum(), leaf)
    torch.testing.assert_close(surrogate(x), grad, rtol=1e-12, atol=1e-12)


def test_unknown_surrogate_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="model.surrogate must be one of boxcar, atan, sigmoid"):
        LIF(surrogate="triangle")


@pytest.mark.parametrize("kernel", slow_when_compiled(KERNELS))
def test_eq1_hand_computed_sequence(kernel):
    # I = 0.6 each step, a = 0.5, theta = 1:
    # u = 0.6, 0.9, 1.05 (spike), reset -> 0.6, 0.9
    current = torch.full((5, 1), 0.6)
    spikes = lif(current, decay=0.5, threshold=1.0, kernel=kernel)
    assert spikes.squeeze(1).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_threshold_is_inclusive_and_reset_is_hard():
    current = torch.tensor([[1.0], [0.2], [1.0]])
    # u = 1.0 (>= theta: spike), reset, then 0.2, then 0.5*0.2 + 1.0 = 1.1 (spike)
    assert lif(current, 0.5, 1.0).squeeze(1).tolist() == [1.0, 0.0, 1.0]


def test_lif_step_is_eq1():
    s, v = lif_step(torch.tensor([0.6, 0.3]), torch.tensor([1.0, 0.2]), 0.5, 1.0)
    # u = 0.5 * 1.0 + 0.6 = 1.1 (spike, v -> 0); u = 0.5 * 0.2 + 0.3 = 0.4
    assert s.tolist() == [1.0, 0.0]
    torch.testing.assert_close(v, torch.tensor([0.0, 0.4]))


@pytest.mark.parametrize("kernel", ["eager", "reference"])
def test_gradient_single_step_is_boxcar(kernel):
    current = torch.tensor([[0.7, 1.2, 2.0, 0.2]], requires_grad=True)
    lif(current, 0.5, 1.0, kernel=kernel).sum().backward()
    assert current.grad.tolist() == [[0.5, 0.5, 0.0, 0.0]]


@pytest.mark.parametrize("kernel", ["eager", "reference"])
def test_gradient_hand_computed_two_steps(kernel):
    # T=2, one neuron, I = [0.8, 0.4], a = 0.5, theta = 1. Loss = s[1].
    # u0 = 0.8 (no spike), u1 = 0.5*0.8 + 0.4 = 0.8 (no spike), both inside the window.
    # ds1/dI1 = 0.5; ds1/dI0 = ds1/du1 * du1/du0 = 0.5 * (a*(1 - s0) - a*u0*ds0/du0)
    #                                  = 0.5 * (0.5 - 0.5*0.8*0.5) = 0.15
    current = torch.tensor([[0.8], [0.4]], requires_grad=True)
    lif(current, 0.5, 1.0, kernel=kernel)[1].sum().backward()
    torch.testing.assert_close(current.grad, torch.tensor([[0.15], [0.5]]))


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("kernel", slow_when_compiled(["eager", "compiled"]))
def test_fused_kernels_match_the_stepwise_reference(kernel, surrogate):
    """Outputs equal and gradients close for every kernel and surrogate, channels-last input
    included (the kernels see it in memory order)."""
    torch.manual_seed(1)
    current = (torch.randn(6, 4, 3, 5, 2) * 0.8 + 0.7)
    current = current.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    weights = torch.randn(6, 4, 3, 5, 2)
    ref_current = current.detach().contiguous().requires_grad_()
    fused = lif(current, 0.5, 1.0, SURROGATES[surrogate], kernel)
    ref = lif(ref_current, 0.5, 1.0, SURROGATES[surrogate], "reference")
    assert torch.equal(fused, ref) and 0 < fused.mean() < 1
    (fused * weights).sum().backward()
    (ref * weights).sum().backward()
    assert current.grad.stride() == current.stride()
    torch.testing.assert_close(current.grad, ref_current.grad, rtol=1e-5, atol=1e-6)


def test_module_equals_function_and_keeps_no_state():
    x = torch.rand(5, 3, 7) * 2
    layer = LIF(0.5, 1.0, "atan")
    first = layer(x)
    assert torch.equal(first, lif(x, 0.5, 1.0, atan))
    assert torch.equal(layer(x), first)  # no membrane state carried between calls
    assert not list(layer.buffers())


def test_other_decay_and_threshold():
    current = torch.full((4, 1), 0.5)
    # a = 0.9, theta = 1.2: u = 0.5, 0.95, 1.355 (spike), 0.5
    assert lif(current, 0.9, 1.2).squeeze(1).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_kernel_is_chosen_per_model():
    cfg = ModelConfig(width=0.0625)
    a, b = cifarnet(cfg, 10, 1, (28, 28)), cifarnet(cfg, 10, 1, (28, 28))
    set_kernel(a, "reference")
    neurons = lambda net: [m for m in net.modules() if isinstance(m, LIF)]  # noqa: E731
    assert len(neurons(a)) == 7
    assert {n.kernel for n in neurons(a)} == {"reference"}
    assert {n.kernel for n in neurons(b)} == {"eager"}
    with pytest.raises(ValueError, match="eager, compiled, reference"):
        set_kernel(a, "fast")


def test_bfloat16_currents_integrate_in_float32_and_spike_exactly():
    # Under bf16 autocast the LIF sees bf16 currents. Potentials integrate in float32 from
    # the (exactly upcast) currents, so the spikes are those of the float32 neuron on the
    # same values, returned in bf16 (0 and 1 exactly); the gradient is the float32 one
    # rounded to bf16.
    torch.manual_seed(3)
    current = (torch.randn(5, 4, 6) * 0.8 + 0.7).to(torch.bfloat16).requires_grad_()
    weights = torch.randn(5, 4, 6).to(torch.bfloat16)
    wide = current.detach().float().requires_grad_()
    spikes = lif(current, 0.5, 1.0)
    wide_spikes = lif(wide, 0.5, 1.0)
    assert spikes.dtype == torch.bfloat16
    assert torch.equal(spikes.float(), wide_spikes)
    (spikes * weights).sum().backward()
    (wide_spikes * weights.float()).sum().backward()
    assert current.grad.dtype == torch.bfloat16
    assert torch.equal(current.grad, wide.grad.to(torch.bfloat16))


def test_relu_unit_is_max_zero_of_the_normalized_current():
    from torch import nn

    from twinsnn.neurons import NEURONS
    unit = NEURONS["relu"](decay=0.5, threshold=1.0, surrogate="boxcar")
    x = torch.tensor([[[-1.0, 0.0, 2.5]]])
    assert torch.equal(unit(x), torch.tensor([[[0.0, 0.0, 2.5]]]))
    norm = nn.BatchNorm1d(3).eval()
    norm.running_mean.fill_(1.0)
    assert torch.equal(unit(x, norm), torch.relu(x - 1.0) / (1.0 + norm.eps) ** 0.5)


# ---- every registered neuron keeps the protocol (neurons.Neuron) ------------------------

def _registered(name: str, **kwargs) -> nn.Module:
    """A neuron of the registry built as ``models.blocks`` builds them."""
    return NEURONS[name](decay=0.5, threshold=1.0, surrogate="boxcar", **kwargs).double()


def _bn(channels: int) -> nn.Module:
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():  # away from the init so that both affine terms matter
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-0.5, 1.0)
    return norm.double()


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_a_registered_neuron_keeps_the_protocol(name):
    neuron = _registered(name)
    assert isinstance(neuron, Neuron)
    net = nn.Sequential(neuron)
    set_kernel(net, "reference", fuse_norm=True)
    assert (neuron.kernel, neuron.fuse_norm) == ("reference", True)
    x = torch.rand(3, 2, 4, dtype=torch.float64) * 2
    assert neuron(x).shape == x.shape and neuron(x, nn.Identity()).shape == x.shape
    if isinstance(neuron, Eq1):  # what the exports read
        assert float(neuron.v_reset) == 0.0 and 0 <= neuron.decay <= 1


@pytest.mark.parametrize("kernel", slow_when_compiled(KERNELS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_a_registered_neuron_gives_the_same_with_its_norm_fused_or_not(name, training, kernel):
    """``forward(x, norm)`` with ``fuse_norm`` on or off, and the norm run before the neuron:
    the same outputs, the same gradients of x and of the norm's affine terms, the same
    running statistics (float64), in training and in evaluation."""
    torch.manual_seed(0)
    shape = (3, 4, 5, 3, 3)  # [T, B, C, H, W]
    x0 = torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3
    weights = torch.randn(*shape, dtype=torch.float64)
    norm0 = _bn(shape[2]).train(training)
    results = []
    for fuse, outside in ((True, False), (False, False), (False, True)):
        neuron, norm = _registered(name, kernel=kernel, fuse_norm=fuse), copy.deepcopy(norm0)
        x = x0.clone().requires_grad_()
        out = neuron(over_time(norm, x)) if outside else neuron(x, norm)
        (out * weights).sum().backward()
        results.append([out, x.grad, norm.weight.grad, norm.bias.grad, *norm.buffers()])
    fused, unfused, before = results
    assert 0 < fused[0].abs().mean()
    for other in (unfused, before):
        for ours, theirs in zip(fused, other):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", slow_when_compiled(KERNELS))
@pytest.mark.parametrize("name", sorted(NEURONS))
def test_a_registered_neuron_keeps_no_state_between_forwards(name, kernel):
    """A forward is a whole sequence from rest: after another input (or a reset), the same
    input gives the same output as in a fresh neuron; and ``reset_states`` leaves it so."""
    torch.manual_seed(1)
    x, other = torch.randn(2, 4, 3, 6, dtype=torch.float64) * 2 + 0.5
    neuron = _registered(name, kernel=kernel)
    first = neuron(x)
    neuron(other)
    assert torch.equal(neuron(x), first)
    reset_states(nn.Sequential(neuron))
    assert torch.equal(neuron(x), first)
    assert torch.equal(_registered(name, kernel=kernel)(x), first)
    assert not list(neuron.buffers())


class Leaky(LIF):
    """A neuron class of one's own that runs eq. 1 (it says so: decay, threshold, v_reset)."""


def test_exports_read_what_a_neuron_does_not_its_class(spread_net):
    """NIR export and integer inference take any neuron that runs eq. 1 with its hard reset
    (``neurons.Eq1``), with the same numbers as a ``LIF``; they refuse one that does not (the
    ReLU unit), or that resets elsewhere, naming the layer."""
    from twinsnn.integer import integer_model
    from twinsnn.models import model_spec
    from twinsnn.nir import to_graph
    from twinsnn.structure import layers

    net = spread_net()
    meta = {"model": model_spec(ModelConfig(width=0.125), 10, 1, (28, 28))}
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        want = integer_model(net)(x)
    for node in layers(net):
        node.module.neuron = Leaky(node.module.neuron.decay, node.module.neuron.threshold)
    with torch.no_grad():
        assert torch.equal(integer_model(net)(x), want)
    to_graph(net, meta)
    last = layers(net)[-1]
    last.module.neuron.v_reset = 0.5
    for export, message in ((integer_model, "integer inference"),
                            (lambda n: to_graph(n, meta), "NIR export")):
        with pytest.raises(ConfigError, match=f"{message} needs the hard reset to 0 of eq. 1; "
                                              f"layer {last.name} resets to 0.5"):
            export(net)
    last.module.neuron = NEURONS["relu"]()
    for export, message in ((integer_model, "integer inference"),
                            (lambda n: to_graph(n, meta), "NIR export")):
        with pytest.raises(ConfigError, match=f"{message} needs neurons of eq. 1 .* layer "
                                              f"{last.name} has ReLU"):
            export(net)
