"""Spiking neurons and surrogate gradients, each by name.

Shapes are time-major: ``current_tb`` is ``[T, B, ...]``. The LIF neuron of paper eq. 1:

    u[t] = a * u[t-1] * (1 - s[t-1]) + I[t]        (hard reset to 0 after a spike)
    s[t] = H(u[t] - theta) = 1 if u[t] >= theta else 0

A surrogate is a pure function ``x = u - theta -> ds/du`` standing in for the derivative of
the step H in the backward pass. Boxcar is the paper's eq. 4 (0.5 where |x| <= 0.5); atan
and sigmoid are SpikingJelly's defaults, the derivatives of smooth steps:

    atan (alpha = 2):    d/dx [arctan(pi/2 alpha x) / pi + 1/2] = alpha / (2 (1 + (pi/2 alpha x)^2))
    sigmoid (alpha = 4): d/dx [sigmoid(alpha x)] = alpha sigmoid(alpha x) (1 - sigmoid(alpha x))

Adding a surrogate is one function here and one line in ``SURROGATES``.

``lif`` runs a whole sequence in one of three ``KERNELS``:
- ``reference``: ``lif_step`` per timestep, autograd through every step (the textbook form);
- ``eager``: one autograd node per sequence; the forward keeps only the potentials ``u``
  (spikes are recomputed from them) and the backward runs the exact BPTT recursion of eq. 1
  through both the leak and the reset, with the surrogate for ds/du;
- ``compiled``: the same two loops through ``torch.compile``, which fuses each into a few
  passes over memory.
Potentials integrate in at least float32 (``state_dtype``): bfloat16 currents (autocast) give
bfloat16 spikes, which hold 0 and 1 exactly, and bfloat16 input gradients.
``batchnorm_lif`` runs a BatchNorm and the LIF after it as one autograd node (``LIF`` with
``fuse_norm``), keeping only the BatchNorm's input for the backward pass.

The neuron protocol (``Neuron``; every entry of ``NEURONS`` keeps it, tests/test_neurons.py
checks each): a neuron is an ``nn.Module`` built as ``cls(decay=, threshold=, surrogate=,
kernel=, fuse_norm=)`` (``models.blocks`` builds them so; what does not apply is ignored) with

- ``forward(x_tb, norm=None)``: spikes (or activations) ``[T, B, ...]`` of the currents
  ``norm(x_tb)``, the norm run over the time-folded batch, or ``x_tb`` itself without one;
- ``kernel``: one of ``KERNELS``, and ``fuse_norm``: whether it may run a fusable norm and
  itself as one autograd node in training; both set by ``set_kernel``, and running the
  norm inside or before the neuron, with any kernel, gives the same outputs and gradients;
- no state between forwards: each forward is a whole sequence from ``u = 0``, so there is
  nothing to reset (``reset_states`` clears the state of other libraries' neurons).

Exports that write or compute eq. 1 itself (``nir``, ``integer``) ask more (``Eq1``): the
leak ``decay``, the ``threshold`` and the reset potential ``v_reset`` (0: the hard reset of
eq. 1); ``eq1_neuron`` checks them or says why a layer cannot be exported.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .errors import ConfigError, lookup
from .layers import fold, over_time

SURROGATE_HEIGHT = 0.5  # eq. 4: value of ds/du inside the window
SURROGATE_HALF_WIDTH = 0.5  # eq. 4: window |u - theta| <= 0.5
ATAN_ALPHA = 2.0  # SpikingJelly's surrogate.ATan default
SIGMOID_ALPHA = 4.0  # SpikingJelly's surrogate.Sigmoid default

Surrogate = Callable[[torch.Tensor], torch.Tensor]


def boxcar(x: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ds/du = 0.5 where ``|x| <= 0.5``, else 0, for ``x = u - theta``."""
    return (x.abs() <= SURROGATE_HALF_WIDTH).to(x.dtype) * SURROGATE_HEIGHT


def atan(x: torch.Tensor) -> torch.Tensor:
    """ds/du = alpha / (2 (1 + (pi/2 * alpha x)^2)), alpha = 2, for ``x = u - theta``."""
    return ATAN_ALPHA / 2 / (1 + (math.pi / 2 * ATAN_ALPHA * x).square())


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """ds/du = alpha sigmoid(alpha x) (1 - sigmoid(alpha x)), alpha = 4, for ``x = u - theta``."""
    s = torch.sigmoid(SIGMOID_ALPHA * x)
    return SIGMOID_ALPHA * s * (1 - s)


SURROGATES = {"boxcar": boxcar, "atan": atan, "sigmoid": sigmoid}
KERNELS = ("eager", "compiled", "reference")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype membrane potentials are integrated in: ``dtype``, at least float32."""
    return torch.promote_types(dtype, torch.float32)


class _Spike(torch.autograd.Function):
    """``H(x)`` forward, ``surrogate(x)`` as its derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate(x), None


def lif_step(current: torch.Tensor, v: torch.Tensor, decay: float, threshold: float,
             surrogate: Surrogate = boxcar) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep of eq. 1: ``(s[t], v[t])`` from ``I[t]`` and ``v[t-1]``, where
    ``v[t] = u[t] (1 - s[t])`` is the potential after the reset."""
    u = current + decay * v
    s = _Spike.apply(u - threshold, surrogate)
    return s, u * (1.0 - s)


def _reference(current_tb: torch.Tensor, decay: float, threshold: float,
               surrogate: Surrogate) -> torch.Tensor:
    """``lif_step`` over T, from ``v = 0``; spikes in the input's dtype."""
    spikes = []
    v = torch.zeros_like(current_tb[0], dtype=state_dtype(current_tb.dtype))
    for current in current_tb:
        s, v = lif_step(current, v, decay, threshold, surrogate)
        spikes.append(s.to(current_tb.dtype))
    return torch.stack(spikes)


def _forward_kernel(current_tb: torch.Tensor, decay: float, threshold: float):
    """Eq. 1 over T: returns ``(spikes_tb, u_tb)``, spikes in the input's dtype, ``u`` in
    ``state_dtype`` of it."""
    spikes, potentials = [], []
    v = torch.zeros_like(current_tb[0], dtype=state_dtype(current_tb.dtype))  # after reset
    for t in range(current_tb.shape[0]):
        u = current_tb[t] + decay * v
        s = (u >= threshold).to(u.dtype)
        spikes.append(s.to(current_tb.dtype))
        potentials.append(u)
        v = u * (1.0 - s)
    return torch.stack(spikes), torch.stack(potentials)


def _backward_kernel(grad_spikes_tb: torch.Tensor, u_tb: torch.Tensor, decay: float,
                     threshold: float, surrogate: Surrogate) -> torch.Tensor:
    """BPTT of eq. 1: ``dL/dI[t]`` (in the dtype of ``dL/ds``) from ``dL/ds[t]`` and the saved
    ``u``, with ``surrogate(u - theta)`` for ds/du."""
    grads = []
    grad_v = torch.zeros_like(u_tb[0])  # dL/dv[t] where v[t] = u[t] * (1 - s[t])
    for t in range(u_tb.shape[0] - 1, -1, -1):
        u = u_tb[t]
        s = (u >= threshold).to(u.dtype)
        # through s[t]: the upstream spike gradient and the reset term -u * ds/du;
        # through the kept potential: (1 - s[t])
        grad_u = (grad_spikes_tb[t] - grad_v * u) * surrogate(u - threshold) + grad_v * (1.0 - s)
        grads.append(grad_u)
        grad_v = grad_u * decay
    return torch.stack(grads[::-1]).to(grad_spikes_tb.dtype)


@functools.cache
def _compiled(kernel):
    # N of the [T, N] rows is marked dynamic at each call; decay, threshold and the surrogate
    # stay constants (symbolic floats would make inductor emit a single-threaded loop)
    return torch.compile(kernel)


def _kernel(kernel, compiled: bool):
    return _compiled(kernel) if compiled else kernel


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"LIF kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _rows(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``[T, ...] -> [T, N]`` with the per-step dims taken in ``order`` (a view when that is
    their memory order)."""
    rows = x.permute(0, *order).reshape(x.shape[0], -1).detach()  # detach: not a view, so
    torch._dynamo.maybe_mark_dynamic(rows, 1)  # the compiled kernels never guard on its base
    return rows


def _unrows(rows: torch.Tensor, like: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Inverse of ``_rows``: ``[T, N]`` back to the shape of ``like``, with its memory layout."""
    inverse = [0] + [order.index(d) + 1 for d in range(1, like.dim())]
    return rows.view(like.shape[0], *(like.shape[d] for d in order)).permute(inverse)


class _LIFSequence(torch.autograd.Function):
    # The kernels see [T, N] in memory order: one compiled kernel serves every layer shape and
    # memory format (channels-last included) and the outputs keep the input's layout.
    @staticmethod
    def forward(ctx, current_tb: torch.Tensor, decay: float, threshold: float,
                surrogate: Surrogate, compiled: bool):
        order = sorted(range(1, current_tb.dim()), key=lambda d: -current_tb.stride(d))
        spikes, u = _kernel(_forward_kernel, compiled)(_rows(current_tb, order), decay,
                                                       threshold)
        ctx.save_for_backward(u)
        ctx.args, ctx.order = (decay, threshold, surrogate, compiled), order
        return _unrows(spikes, current_tb, order)

    @staticmethod
    def backward(ctx, grad_spikes_tb: torch.Tensor):
        (u,) = ctx.saved_tensors
        decay, threshold, surrogate, compiled = ctx.args
        grad = _rows(grad_spikes_tb, ctx.order).contiguous()
        grad_current = _kernel(_backward_kernel, compiled)(grad, u, decay, threshold, surrogate)
        return _unrows(grad_current, grad_spikes_tb, ctx.order), None, None, None, None


def lif(current_tb: torch.Tensor, decay: float = 0.5, threshold: float = 1.0,
        surrogate: Surrogate = boxcar, kernel: str = "eager") -> torch.Tensor:
    """Spikes ``[T, B, ...]`` (0/1 in the input's dtype) of LIF neurons driven by ``current_tb``,
    computed by ``kernel`` (one of ``KERNELS``; all give the same spikes).

    The state starts at 0 and lives only inside this call.
    """
    if current_tb.dim() < 2:
        raise ValueError(f"lif expects [T, B, ...], got shape {tuple(current_tb.shape)}")
    if kernel == "reference":
        return _reference(current_tb, decay, threshold, surrogate)
    _check_kernel(kernel)
    return _LIFSequence.apply(current_tb, float(decay), float(threshold), surrogate,
                              kernel == "compiled")


# BatchNorm and LIF as one autograd node (``batchnorm_lif``). Unfused, ``lif(batchnorm(x))``
# keeps for the backward pass BatchNorm's input x and the LIF's potentials u, and writes the
# current I between them. Fused, the forward computes the per-channel statistics of x over the
# time-folded batch, then in one pass
#     I[t] = x[t] * scale + shift,  scale = gamma / sqrt(var + eps),  shift = beta - mean * scale
# and eq. 1, keeping only x and the statistics. The backward recomputes u from x, runs the
# BPTT of eq. 1 for dL/dI and BatchNorm's backward, with xhat = (x - mean) / sqrt(var + eps)
# and n values per channel:
#     dL/dbeta = sum dL/dI,  dL/dgamma = sum dL/dI * xhat,
#     dL/dx = scale * (dL/dI - (dL/dbeta + xhat * dL/dgamma) / n)
# (with running statistics, in eval mode: dL/dx = scale * dL/dI). The current is float32 for
# x of any dtype. The kernels see x as [T, outer, C, inner] in its memory order, so one
# compiled kernel serves every layer shape and memory format.

def _fused_forward(x, scale, shift, decay: float, threshold: float, dtype: torch.dtype):
    """Spikes in ``dtype`` of the current ``x * scale + shift`` (float32: scale is)."""
    return _forward_kernel(x * scale + shift, decay, threshold)[0].to(dtype)


def _fused_backward(grad_spikes, x, scale, shift, mean, invstd, batch_stats: bool,
                    decay: float, threshold: float, surrogate):
    """``(dL/dx, dL/dgamma, dL/dbeta)`` over ``[T, outer, C, inner]`` rows; per-channel
    tensors are ``[C, 1]``, their gradients ``[C]``."""
    _, u = _forward_kernel(x * scale + shift, decay, threshold)
    grad_current = _backward_kernel(grad_spikes.to(u.dtype), u, decay, threshold, surrogate)
    xhat = (x - mean) * invstd
    grad_bias = grad_current.sum((0, 1, 3))
    grad_weight = (grad_current * xhat).sum((0, 1, 3))
    if batch_stats:  # through the batch mean and variance
        n = x.numel() // x.shape[2]
        grad_current = grad_current - (grad_bias[:, None] + xhat * grad_weight[:, None]) / n
    return (grad_current * scale).to(x.dtype), grad_weight, grad_bias


def _channel_rows(x_tb: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``[T, B, C, ...] -> [T, outer, C, inner]``: the dims before and after C in the memory
    order ``order`` merged (a view when that is their memory order)."""
    inner = 1
    for d in order[order.index(2) + 1:]:
        inner *= x_tb.shape[d]
    rows = _rows(x_tb, order).contiguous().view(x_tb.shape[0], -1, x_tb.shape[2], inner)
    for d in (1, 2, 3):
        torch._dynamo.maybe_mark_dynamic(rows, d)
    return rows


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """``[C] -> [C, 1]``, C dynamic for the compiled kernels."""
    t = t.detach()[:, None]
    torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


class _NormLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_tb, weight, bias, mean, invstd, batch_stats: bool, decay: float,
                threshold: float, surrogate, compiled: bool):
        order = sorted(range(1, x_tb.dim()), key=lambda d: -x_tb.stride(d))
        scale = weight.detach() * invstd
        shift = bias.detach() - mean * scale
        spikes = _kernel(_fused_forward, compiled)(
            _channel_rows(x_tb, order), _per_channel(scale), _per_channel(shift), decay,
            threshold, x_tb.dtype)
        ctx.save_for_backward(x_tb, scale, shift, mean, invstd)
        ctx.args, ctx.order = (batch_stats, decay, threshold, surrogate, compiled), order
        return _unrows(spikes.flatten(1), x_tb, order)

    @staticmethod
    def backward(ctx, grad_spikes_tb):
        x_tb, scale, shift, mean, invstd = ctx.saved_tensors
        batch_stats, decay, threshold, surrogate, compiled = ctx.args
        grad_x, grad_weight, grad_bias = _kernel(_fused_backward, compiled)(
            _channel_rows(grad_spikes_tb, ctx.order), _channel_rows(x_tb, ctx.order),
            *map(_per_channel, (scale, shift, mean, invstd)), batch_stats, decay, threshold,
            surrogate)
        return (_unrows(grad_x.flatten(1), x_tb, ctx.order), grad_weight, grad_bias,
                None, None, None, None, None, None, None)


def running_average_factor(norm: nn.modules.batchnorm._BatchNorm) -> float:
    """Count one more training batch of ``norm`` and return the weight of its statistics in
    the running averages: ``momentum``, or ``1 / batches`` (a plain mean) when it is None."""
    norm.num_batches_tracked.add_(1)
    if norm.momentum is None:
        return 1.0 / float(norm.num_batches_tracked)
    return norm.momentum


def fusable(norm: nn.Module) -> bool:
    """Whether ``batchnorm_lif`` can run ``norm``: an affine ``nn.BatchNorm1d``/``2d`` with
    running statistics (not a subclass such as a synchronized one)."""
    return (type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d) and norm.affine
            and norm.track_running_stats)


def batchnorm_lif(x_tb: torch.Tensor, norm: nn.modules.batchnorm._BatchNorm, decay: float = 0.5,
                  threshold: float = 1.0, surrogate: Surrogate = boxcar,
                  compiled: bool = False) -> torch.Tensor:
    """Spikes ``[T, B, C, ...]`` of ``lif(norm(x_tb))``, ``norm`` over the time-folded batch
    (``fusable(norm)``), as one autograd node; ``compiled``: its loops through torch.compile.
    In training mode it uses the batch statistics and updates the running averages, as
    ``norm`` does."""
    with torch.no_grad():
        if norm.training:
            mean, var = torch.ops.aten.batch_norm_update_stats(
                fold(x_tb), norm.running_mean, norm.running_var,
                running_average_factor(norm))
        else:
            mean, var = norm.running_mean, norm.running_var
        invstd = torch.rsqrt(var + norm.eps)
    return _NormLIF.apply(x_tb, norm.weight, norm.bias, mean, invstd, norm.training,
                          float(decay), float(threshold), surrogate, compiled)


@runtime_checkable
class Neuron(Protocol):
    """What a network's layers and ``set_kernel`` ask of a neuron (module docstring)."""

    kernel: str
    fuse_norm: bool

    def forward(self, x_tb: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor: ...


@runtime_checkable
class Eq1(Protocol):
    """A neuron that runs eq. 1: ``u[t] = decay * v[t-1] + I[t]``, a spike where
    ``u >= threshold``, then ``v = v_reset`` (else ``v = u``)."""

    decay: float
    threshold: float
    v_reset: float


def eq1_neuron(neuron: nn.Module, what: str, layer: str) -> Eq1:
    """``neuron`` itself, checked to run eq. 1 with its hard reset to 0, which is what
    ``what`` (an export) computes; ``ConfigError`` naming ``layer`` otherwise."""
    if not isinstance(neuron, Eq1):
        raise ConfigError(f"{what} needs neurons of eq. 1 (decay, threshold, v_reset); layer "
                          f"{layer} has {type(neuron).__name__}")
    if float(neuron.v_reset) != 0.0:
        raise ConfigError(f"{what} needs the hard reset to 0 of eq. 1; layer {layer} resets "
                          f"to {neuron.v_reset}")
    return neuron


class LIF(nn.Module):
    """Multi-step LIF layer over ``[T, B, ...]``; holds only its parameters, never state.

    ``forward(x_tb, norm)`` drives the neurons with ``norm(x_tb)`` (time folded into the
    batch), through ``batchnorm_lif`` when ``fuse_norm`` is on, the norm ``fusable`` and in
    training mode, and the kernel not the reference. In evaluation the norm runs before the
    neurons, as in an exported graph, so that both give the same logits bit for bit (the
    fusion saves memory for the backward pass, which evaluation has not).
    """

    v_reset = 0.0  # eq. 1's hard reset

    def __init__(self, decay: float = 0.5, threshold: float = 1.0, surrogate: str = "boxcar",
                 kernel: str = "eager", fuse_norm: bool = False):
        super().__init__()
        self.decay = decay
        self.threshold = threshold
        lookup(SURROGATES, surrogate, "model.surrogate")
        self.surrogate = surrogate
        self.kernel = _check_kernel(kernel)
        self.fuse_norm = fuse_norm

    def forward(self, x_tb: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        surrogate = SURROGATES[self.surrogate]
        if norm is None:
            return lif(x_tb, self.decay, self.threshold, surrogate, self.kernel)
        if self.fuse_norm and norm.training and self.kernel != "reference" and fusable(norm):
            return batchnorm_lif(x_tb, norm, self.decay, self.threshold, surrogate,
                                 self.kernel == "compiled")
        return lif(over_time(norm, x_tb), self.decay, self.threshold, surrogate, self.kernel)

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, threshold={self.threshold}, "
                f"surrogate={self.surrogate}, kernel={self.kernel}, fuse_norm={self.fuse_norm}")


class ReLU(nn.Module):
    """A non-spiking unit, ``max(0, I[t])`` at every timestep, in place of the LIF: with
    ``model.timesteps=1`` the network is a plain ANN (the paper's "other networks"). Takes the
    LIF's arguments so that the registry builds both alike; decay, threshold and surrogate do
    not apply to it."""

    def __init__(self, decay: float = 0.5, threshold: float = 1.0, surrogate: str = "boxcar",
                 kernel: str = "eager", fuse_norm: bool = False):
        super().__init__()
        self.kernel, self.fuse_norm = _check_kernel(kernel), fuse_norm

    def forward(self, x_tb: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        return torch.relu(x_tb if norm is None else over_time(norm, x_tb))


NEURONS = {"lif": LIF, "relu": ReLU}


def reset_states(model: nn.Module) -> None:
    """Clear the state a network's neurons keep between forwards, before a new batch:
    SpikingJelly's memory modules (their ``reset()``, as ``functional.reset_net`` does) and
    snnTorch's neurons (``reset_mem()``, each instance of this network only: not
    ``snntorch.utils.reset``, which resets a list of instances shared by every network).
    twinsnn's neurons keep no state; a model with another kind passes its own reset to
    ``twinsnn.fit``."""
    for module in model.modules():
        if hasattr(module, "register_memory") and callable(getattr(module, "reset", None)):
            module.reset()
        elif callable(getattr(module, "reset_mem", None)) and hasattr(module, "mem"):
            module.reset_mem()


def set_kernel(model: nn.Module, kernel: str, fuse_norm: bool = False) -> nn.Module:
    """Run every neuron of ``model`` (a ``Neuron``) with ``kernel`` (one of ``KERNELS``), its
    BatchNorm fused into it or not; returns ``model``."""
    _check_kernel(kernel)
    for module in model.modules():
        if isinstance(module, Neuron):
            module.kernel = kernel
            module.fuse_norm = fuse_norm
    return model
