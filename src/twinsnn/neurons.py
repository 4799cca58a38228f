"""Leaky integrate-and-fire dynamics (paper eq. 1) with the boxcar surrogate (eq. 4).

Shapes are time-major: ``current_tb`` is ``[T, B, ...]``.

    u[t] = a * u[t-1] * (1 - s[t-1]) + I[t]        (hard reset to 0 after a spike)
    s[t] = 1 if u[t] >= theta else 0
    ds/du ~= 0.5 if |u[t] - theta| <= 0.5 else 0   (boxcar surrogate)

The whole sequence is one autograd node: the forward keeps only the membrane potentials
``u`` (spikes are recomputed from them), and the backward runs the exact BPTT recursion of
eq. 1 through both the leak and the reset, with the boxcar standing in for ds/du.
Potentials integrate in at least float32 (``state_dtype``): bfloat16 currents (autocast) give
bfloat16 spikes, which hold 0 and 1 exactly, and bfloat16 input gradients. Both loops
can run through ``torch.compile`` (``use_compiled_kernels``), which fuses each into a few
passes over memory.
"""
from __future__ import annotations

import torch
from torch import nn

SURROGATE_HEIGHT = 0.5  # eq. 4: value of ds/du inside the window
SURROGATE_HALF_WIDTH = 0.5  # eq. 4: window |u - theta| <= 0.5


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype membrane potentials are integrated in: ``dtype``, at least float32."""
    return torch.promote_types(dtype, torch.float32)


def boxcar(u: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 4: the surrogate derivative ds/du, elementwise."""
    return ((u - threshold).abs() <= SURROGATE_HALF_WIDTH).to(u.dtype) * SURROGATE_HEIGHT


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
                     threshold: float) -> torch.Tensor:
    """BPTT of eq. 1, boxcar for ds/du: ``dL/dI[t]`` (in the dtype of ``dL/ds``) from
    ``dL/ds[t]`` and the saved ``u``."""
    grads = []
    grad_v = torch.zeros_like(u_tb[0])  # dL/dv[t] where v[t] = u[t] * (1 - s[t])
    for t in range(u_tb.shape[0] - 1, -1, -1):
        u = u_tb[t]
        s = (u >= threshold).to(u.dtype)
        # through s[t]: the upstream spike gradient and the reset term -u * ds/du;
        # through the kept potential: (1 - s[t])
        grad_u = (grad_spikes_tb[t] - grad_v * u) * boxcar(u, threshold) + grad_v * (1.0 - s)
        grads.append(grad_u)
        grad_v = grad_u * decay
    return torch.stack(grads[::-1]).to(grad_spikes_tb.dtype)


class _Kernels:
    """The two kernels, run eagerly or through ``torch.compile`` (one fused loop each:
    several times faster, since the LIF is elementwise and memory-bound)."""

    def __init__(self):
        self.compiled = False
        self._compiled = None

    def get(self):
        if not self.compiled:
            return _forward_kernel, _backward_kernel
        if self._compiled is None:
            # N of the [T, N] rows is marked dynamic at each call; decay and threshold stay
            # constants (symbolic floats would make inductor emit a single-threaded loop)
            self._compiled = (torch.compile(_forward_kernel), torch.compile(_backward_kernel))
        return self._compiled


KERNELS = _Kernels()


def use_compiled_kernels(flag: bool) -> None:
    """Run the LIF through ``torch.compile`` (same results; needs a C++ compiler on CPU)."""
    KERNELS.compiled = bool(flag)


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
    def forward(ctx, current_tb: torch.Tensor, decay: float, threshold: float):
        order = sorted(range(1, current_tb.dim()), key=lambda d: -current_tb.stride(d))
        forward_kernel, _ = KERNELS.get()
        spikes, u = forward_kernel(_rows(current_tb, order), decay, threshold)
        ctx.save_for_backward(u)
        ctx.decay, ctx.threshold, ctx.order = decay, threshold, order
        return _unrows(spikes, current_tb, order)

    @staticmethod
    def backward(ctx, grad_spikes_tb: torch.Tensor):
        (u,) = ctx.saved_tensors
        _, backward_kernel = KERNELS.get()
        grad = _rows(grad_spikes_tb, ctx.order).contiguous()
        grad_current = backward_kernel(grad, u, ctx.decay, ctx.threshold)
        return _unrows(grad_current, grad_spikes_tb, ctx.order), None, None


def lif(current_tb: torch.Tensor, decay: float = 0.5, threshold: float = 1.0) -> torch.Tensor:
    """Spikes ``[T, B, ...]`` (0/1 in the input's dtype) of LIF neurons driven by ``current_tb``.

    The state starts at 0 and lives only inside this call.
    """
    if current_tb.dim() < 2:
        raise ValueError(f"lif expects [T, B, ...], got shape {tuple(current_tb.shape)}")
    return _LIFSequence.apply(current_tb, float(decay), float(threshold))


class LIF(nn.Module):
    """Multi-step LIF layer over ``[T, B, ...]``; holds only its parameters, never state."""

    def __init__(self, decay: float = 0.5, threshold: float = 1.0):
        super().__init__()
        self.decay = decay
        self.threshold = threshold

    def forward(self, current_tb: torch.Tensor) -> torch.Tensor:
        return lif(current_tb, self.decay, self.threshold)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, threshold={self.threshold}"
