"""Eq. 1 (LIF with hard reset) and eq. 4 (boxcar surrogate) on hand-made tensors."""
import torch

from twinsnn.neurons import LIF, boxcar, lif


class _Spike(torch.autograd.Function):
    """Heaviside with the eq. 4 boxcar, one step at a time: the textbook reference."""

    @staticmethod
    def forward(ctx, u, theta):
        ctx.save_for_backward(u)
        ctx.theta = theta
        return (u >= theta).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * 0.5 * ((u - ctx.theta).abs() <= 0.5).to(u.dtype), None


def reference_lif(current_tb, decay, theta):
    u_prev = torch.zeros_like(current_tb[0])
    s_prev = torch.zeros_like(current_tb[0])
    out = []
    for current in current_tb:
        u = decay * u_prev * (1 - s_prev) + current  # eq. 1
        s = _Spike.apply(u, theta)
        out.append(s)
        u_prev, s_prev = u, s
    return torch.stack(out)


def test_eq1_hand_computed_sequence():
    # I = 0.6 each step, a = 0.5, theta = 1:
    # u = 0.6, 0.9, 1.05 (spike), reset -> 0.6, 0.9
    current = torch.full((5, 1), 0.6)
    spikes = lif(current, decay=0.5, threshold=1.0)
    assert spikes.squeeze(1).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_threshold_is_inclusive_and_reset_is_hard():
    current = torch.tensor([[1.0], [0.2], [1.0]])
    # u = 1.0 (>= theta: spike), reset, then 0.2, then 0.5*0.2 + 1.0 = 1.1 (spike)
    assert lif(current, 0.5, 1.0).squeeze(1).tolist() == [1.0, 0.0, 1.0]


def test_boxcar_values_eq4():
    u = torch.tensor([0.49, 0.5, 1.0, 1.5, 1.51, -3.0])
    assert boxcar(u, 1.0).tolist() == [0.0, 0.5, 0.5, 0.5, 0.0, 0.0]


def test_gradient_single_step_is_boxcar():
    current = torch.tensor([[0.7, 1.2, 2.0, 0.2]], requires_grad=True)
    lif(current, 0.5, 1.0).sum().backward()
    assert current.grad.tolist() == [[0.5, 0.5, 0.0, 0.0]]


def test_gradient_hand_computed_two_steps():
    # T=2, one neuron, I = [0.8, 0.4], a = 0.5, theta = 1. Loss = s[1].
    # u0 = 0.8 (no spike), u1 = 0.5*0.8 + 0.4 = 0.8 (no spike), both inside the window.
    # ds1/dI1 = 0.5; ds1/dI0 = ds1/du1 * du1/du0 = 0.5 * (a*(1 - s0) - a*u0*ds0/du0)
    #                                  = 0.5 * (0.5 - 0.5*0.8*0.5) = 0.15
    current = torch.tensor([[0.8], [0.4]], requires_grad=True)
    lif(current, 0.5, 1.0)[1].sum().backward()
    torch.testing.assert_close(current.grad, torch.tensor([[0.15], [0.5]]))


def test_fused_matches_stepwise_reference_values_and_gradients():
    torch.manual_seed(1)
    current = (torch.randn(6, 4, 3, 5) * 0.8 + 0.7).requires_grad_()
    weights = torch.randn(6, 4, 3, 5)
    ref_current = current.detach().clone().requires_grad_()
    fused = lif(current, 0.5, 1.0)
    ref = reference_lif(ref_current, 0.5, 1.0)
    assert torch.equal(fused, ref)
    (fused * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(current.grad, ref_current.grad, rtol=1e-5, atol=1e-6)


def test_module_equals_function_and_keeps_no_state():
    x = torch.rand(5, 3, 7) * 2
    layer = LIF(0.5, 1.0)
    first = layer(x)
    assert torch.equal(first, lif(x, 0.5, 1.0))
    assert torch.equal(layer(x), first)  # no membrane state carried between calls
    assert not list(layer.buffers())


def test_other_decay_and_threshold():
    current = torch.full((4, 1), 0.5)
    # a = 0.9, theta = 1.2: u = 0.5, 0.95, 1.355 (spike), 0.5
    assert lif(current, 0.9, 1.2).squeeze(1).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_compiled_kernels_give_the_same_spikes_and_gradients():
    from twinsnn.neurons import use_compiled_kernels
    torch.manual_seed(2)
    current = (torch.randn(5, 3, 4, 6) * 0.8 + 0.7).requires_grad_()
    weights = torch.randn(5, 3, 4, 6)
    eager = lif(current, 0.5, 1.0)
    (eager * weights).sum().backward()
    eager_grad = current.grad.clone()
    current.grad = None
    use_compiled_kernels(True)
    try:
        compiled = lif(current, 0.5, 1.0)
        (compiled * weights).sum().backward()
    finally:
        use_compiled_kernels(False)
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(current.grad, eager_grad, rtol=1e-6, atol=1e-7)


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
