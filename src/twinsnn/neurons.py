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
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from .errors import lookup

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


class LIF(nn.Module):
    """Multi-step LIF layer over ``[T, B, ...]``; holds only its parameters, never state."""

    def __init__(self, decay: float = 0.5, threshold: float = 1.0, surrogate: str = "boxcar",
                 kernel: str = "eager"):
        super().__init__()
        self.decay = decay
        self.threshold = threshold
        lookup(SURROGATES, surrogate, "model.surrogate")
        self.surrogate = surrogate
        self.kernel = _check_kernel(kernel)

    def forward(self, current_tb: torch.Tensor) -> torch.Tensor:
        return lif(current_tb, self.decay, self.threshold, SURROGATES[self.surrogate],
                   self.kernel)

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, threshold={self.threshold}, "
                f"surrogate={self.surrogate}, kernel={self.kernel}")


NEURONS = {"lif": LIF}


def set_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Run every neuron of ``model`` with ``kernel`` (one of ``KERNELS``); returns ``model``."""
    _check_kernel(kernel)
    for module in model.modules():
        if isinstance(module, tuple(NEURONS.values())):
            module.kernel = kernel
    return model
