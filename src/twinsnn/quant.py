"""Ternary and binary weights (paper section 4.2) with a straight-through estimator.

Ternary weights follow eq. 6 with a symmetric threshold D:

    W_t = -1 if W < -D,   0 if |W| <= D,   +1 if W > D

where D comes from ``quant.delta`` by a rule (``ternary_threshold``): ``absolute``, eq. 6 as
written (D = delta, the paper's 0.1), or ``mean_abs``, D = delta * mean(|W|) of the layer or
of each output channel, recomputed from the latent weights at every forward (the rule of
ternary weight networks, Li et al. 2016, whose usual factor is 0.7)
and binary weights are ``sign(W)`` with ``sign(0) = +1``. The codes carry no scale factor
(``scale="none"``, the paper); ``scale="layer"`` or ``"channel"`` multiplies them by the mean
``|W|`` over the kept (non-zero code) weights of the layer or of each output channel.
The backward pass is the identity: the gradient reaches the latent full-precision weight
unchanged, so it keeps learning while the forward sees the quantized weight.

Compression is attached with ``torch.nn.utils.parametrize``: the latent weight becomes
``module.parametrizations.weight.original``, the same ``Parameter`` object, so an optimizer
built before compression keeps updating it with its state intact.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Callable, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError

MODES = ("ternary", "binary")
SCALES = ("none", "layer", "channel")
DELTA_RULES = ("absolute", "mean_abs")
DELTA_PER = ("layer", "channel")


def check_threshold_rule(rule: str, per: str) -> None:
    """``ConfigError`` unless ``rule`` and ``per`` name a threshold rule and granularity that
    go together."""
    if rule not in DELTA_RULES:
        raise ConfigError(f"quant.delta_rule must be one of {DELTA_RULES}, got {rule!r}")
    if per not in DELTA_PER:
        raise ConfigError(f"quant.delta_per must be one of {DELTA_PER}, got {per!r}")
    if rule == "absolute" and per != "layer":
        raise ConfigError("quant.delta_per=channel needs quant.delta_rule=mean_abs "
                          "(an absolute threshold is the same for every channel)")


def ternary_threshold(w: torch.Tensor, delta: float, rule: str = "absolute",
                      per: str = "layer") -> float | torch.Tensor:
    """D of eq. 6 for weights ``w`` ``[out, ...]``: ``absolute`` gives ``delta`` itself;
    ``mean_abs`` gives ``delta * mean(|w|)``, a 0-d tensor (``per="layer"``) or one value per
    output channel, shape ``[out, 1, ...]`` (``per="channel"``). No gradient flows through D."""
    check_threshold_rule(rule, per)
    if rule == "absolute":
        return delta
    dims = tuple(range(w.dim())) if per == "layer" else tuple(range(1, w.dim()))
    return delta * w.detach().abs().mean(dims, keepdim=per == "channel")


def quant_codes(w: torch.Tensor, mode: str, delta: float | torch.Tensor = 0.1) -> torch.Tensor:
    """Codes of ``w`` in its dtype: eq. 6 for ternary with threshold ``delta`` (a number,
    compared in ``w``'s dtype, or a tensor broadcasting against ``w``; boundaries
    ``|w| = delta`` map to 0), ``sign`` with ``0 -> +1`` for binary."""
    if mode == "ternary":
        return (w > delta).to(w.dtype) - (w < -delta).to(w.dtype)
    if mode == "binary":
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    raise ConfigError(f"quant.mode must be one of {MODES}, got {mode!r}")


def quant_scale(w: torch.Tensor, codes: torch.Tensor, scale: str) -> torch.Tensor | None:
    """Full-precision factor multiplying ``codes``: ``None`` (scale "none"), shape
    ``[1, 1, ...]`` ("layer") or ``[out, 1, ...]`` ("channel"); the mean ``|w|`` over the
    entries with a non-zero code, 0 where there are none."""
    if scale == "none":
        return None
    if scale not in SCALES:
        raise ConfigError(f"quant.scale must be one of {SCALES}, got {scale!r}")
    kept = (codes != 0).to(w.dtype)
    dims = tuple(range(w.dim())) if scale == "layer" else tuple(range(1, w.dim()))
    total = (w.abs() * kept).sum(dims, keepdim=True)
    return total / kept.sum(dims, keepdim=True).clamp(min=1.0)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, mode: str, delta, scale: str) -> torch.Tensor:
        codes = quant_codes(w, mode, delta)
        factor = quant_scale(w, codes, scale)
        return codes if factor is None else codes * factor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None


def quantize(w: torch.Tensor, mode: str, delta: float = 0.1, scale: str = "none",
             delta_rule: str = "absolute", delta_per: str = "layer") -> torch.Tensor:
    """``quant_codes(w, D) * quant_scale(w)`` forward with D from ``ternary_threshold``,
    identity backward (straight-through)."""
    threshold = ternary_threshold(w, float(delta), delta_rule, delta_per)
    return _StraightThrough.apply(w, mode, threshold, scale)


def ternarize(w: torch.Tensor, delta: float = 0.1) -> torch.Tensor:
    """Eq. 6: values exactly in {-1, 0, +1}; gradient passes through unchanged."""
    return quantize(w, "ternary", delta)


def binarize(w: torch.Tensor) -> torch.Tensor:
    """``sign(w)`` in {-1, +1} with ``sign(0) = +1``; gradient passes through unchanged."""
    return quantize(w, "binary")


class Quantize(nn.Module):
    """Parametrization ``weight = quantize(original, mode, delta, scale, delta_rule,
    delta_per)``."""

    def __init__(self, mode: str, delta: float = 0.1, scale: str = "none",
                 delta_rule: str = "absolute", delta_per: str = "layer"):
        super().__init__()
        self.configure(mode, delta, scale, delta_rule, delta_per)

    def configure(self, mode: str, delta: float, scale: str, delta_rule: str = "absolute",
                  delta_per: str = "layer") -> None:
        if mode not in MODES:
            raise ConfigError(f"quant.mode must be one of {MODES}, got {mode!r}")
        if scale not in SCALES:
            raise ConfigError(f"quant.scale must be one of {SCALES}, got {scale!r}")
        if not delta >= 0.0:
            raise ConfigError(f"quant.delta must be >= 0, got {delta}")
        check_threshold_rule(delta_rule, delta_per)
        self.mode, self.delta, self.scale = mode, float(delta), scale
        self.delta_rule, self.delta_per = delta_rule, delta_per

    def threshold(self, w: torch.Tensor) -> float | torch.Tensor:
        """D of eq. 6 for latent weights ``w`` under this layer's rule."""
        return ternary_threshold(w, self.delta, self.delta_rule, self.delta_per)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return quantize(w, self.mode, self.delta, self.scale, self.delta_rule, self.delta_per)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, delta={self.delta}, delta_rule={self.delta_rule}, "
                f"delta_per={self.delta_per}, scale={self.scale}")


def quantizer(module: nn.Module) -> Quantize | None:
    """The ``Quantize`` parametrization on ``module.weight``, or ``None``."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations.weight if isinstance(p, Quantize)]
    return found[0] if found else None


SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the layers compression considers
Selector = Union[None, str, Sequence[str], type, tuple, Callable[[str, nn.Module], bool]]


def _selected(name: str, module: nn.Module, layers: Selector) -> bool:
    if layers is None:
        return True
    if isinstance(layers, str):
        layers = [p.strip() for p in layers.split(",") if p.strip()]
    if isinstance(layers, type) or (isinstance(layers, tuple) and all(
            isinstance(t, type) for t in layers)):
        return isinstance(module, layers)
    if callable(layers):
        return bool(layers(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in layers)


def select_layers(model: nn.Module, layers: Selector = None,
                  full_precision_ends: bool = True) -> list[str]:
    """Names of the layers ``compress`` quantizes: the conv and linear layers (``SYNAPSES``)
    of ``model`` in module order, without the first and the last where
    ``full_precision_ends``, that ``layers`` selects: all (``None``), those whose name
    matches a pattern (``"fcs.*"``; a comma-separated string or a list, ``fnmatch``
    patterns), those of a type (or a tuple of types), or those for which a predicate
    ``(name, module) -> bool`` holds. ``ConfigError`` when none is left."""
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, SYNAPSES)]
    if full_precision_ends:
        candidates = candidates[1:-1]
    chosen = [n for n, m in candidates if _selected(n, m, layers)]
    if not chosen:
        names = ", ".join(n for n, _ in candidates)[:300] or "none"
        raise ConfigError(f"the layer selection {layers!r:.80} matches no layer to compress "
                          f"(candidates: {names})")
    return chosen


def compress(model: nn.Module, mode: str, delta: float = 0.1,
             full_precision_ends: bool = True, scale: str | dict[str, str] = "none",
             delta_rule: str = "absolute", delta_per: str = "layer",
             layers: Selector = None) -> list[str]:
    """Quantize the weight of every layer ``select_layers(model, layers,
    full_precision_ends)`` names, with ``scale`` (one for all, or ``{layer: scale}``).
    Idempotent: an existing parametrization is reconfigured, never stacked. Returns the
    compressed layer names."""
    chosen = set(select_layers(model, layers, full_precision_ends))
    for name, module in list(model.named_modules()):
        if name not in chosen:
            continue
        its = scale[name] if isinstance(scale, dict) else scale
        existing = quantizer(module)
        if existing is not None:
            existing.configure(mode, delta, its, delta_rule, delta_per)
        else:
            parametrize.register_parametrization(
                module, "weight", Quantize(mode, delta, its, delta_rule, delta_per))
    return compressed_layers(model)


def decompress(model: nn.Module) -> None:
    """Remove every ``Quantize`` parametrization; the latent weights (same ``Parameter``
    objects) become the plain weights again."""
    for module in list(model.modules()):
        if quantizer(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def baked(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without parametrizations: each compressed weight becomes a plain
    ``Parameter`` holding its quantized values (``codes * scale``); ``model`` is untouched."""
    plain = copy.deepcopy(model)
    for module in list(plain.modules()):
        if quantizer(module) is None:
            continue
        with torch.no_grad():
            weight = module.weight.clone()
        # A deep copy shares its parametrized class with the original module, and
        # parametrize.remove_parametrizations would edit that class; restore the plain class
        # on the copy instead.
        module.__class__ = type(module).__bases__[0]
        del module.parametrizations
        module.weight = nn.Parameter(weight)
    return plain


def is_compressed(model: nn.Module) -> bool:
    return any(quantizer(m) is not None for m in model.modules())


def compressed_layers(model: nn.Module) -> list[str]:
    """Names (as in ``named_modules``) of the layers whose weight is quantized."""
    return [name for name, m in model.named_modules() if quantizer(m) is not None]


def compression_on(cfg_quant, epoch: int) -> bool:
    """Delayed compression (section 4.2): full precision for epochs ``< cfg.start_epoch``,
    compressed from ``epoch == cfg.start_epoch`` on; never for mode "none" (0-based epochs)."""
    return cfg_quant.mode != "none" and epoch >= cfg_quant.start_epoch


def set_compression(model: nn.Module, cfg_quant, epoch: int, layers: Selector = None,
                    scales: dict[str, str] | None = None) -> bool:
    """Compress or decompress ``model`` as ``compression_on`` says, the layers that
    ``layers`` (else ``cfg_quant.layers``) selects, each with its scale of ``scales`` where
    ``cfg_quant.scale`` is ``auto`` (``safeguards.scales``); returns whether it is on."""
    on = compression_on(cfg_quant, epoch)
    if on:
        scale = cfg_quant.scale
        if scale == "auto":
            if scales is None:
                raise ConfigError("quant.scale=auto needs each layer's scale "
                                  "(twinsnn.safeguards.scales); or set quant.scale")
            scale = scales
        compress(model, cfg_quant.mode, cfg_quant.delta, cfg_quant.full_precision_ends,
                 scale, cfg_quant.delta_rule, cfg_quant.delta_per,
                 cfg_quant.layers if layers is None else layers)
    else:
        decompress(model)
    return on


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """``{layer: fraction of zero weights}`` of the quantized weights of compressed layers."""
    return {name: (m.weight == 0).float().mean().item()
            for name, m in model.named_modules() if quantizer(m) is not None}


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``values < 2**bits`` (flattened) -> uint8, ``8 // bits`` per byte, first value
    in the lowest bits; the tail is zero-padded."""
    per_byte = 8 // bits
    flat = values.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per_byte)]).view(-1, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    return (flat << shifts).sum(1, dtype=torch.uint8)  # disjoint bits: sum == bitwise or


def _unpack(packed: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    per_byte = 8 // bits
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed codes must be a 1-d uint8 tensor, got {packed.dtype} "
                         f"{tuple(packed.shape)}")
    if packed.numel() != -(-numel // per_byte):
        raise ValueError(f"{packed.numel()} bytes cannot hold exactly {numel} codes "
                         f"of {bits} bit(s)")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    return ((packed[:, None] >> shifts) & (2**bits - 1)).view(-1)[:numel]


def _check_codes(codes: torch.Tensor, allowed: tuple[int, ...]) -> None:
    if not bool(torch.isin(codes, torch.tensor(allowed, dtype=codes.dtype)).all()):
        raise ValueError(f"codes must be in {set(allowed)}")


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, 0, 1} (any shape, ``n`` elements) -> uint8 ``[ceil(n / 4)]``, 2 bits per
    code as 2-bit two's complement: 0 -> 00, +1 -> 01, -1 -> 11."""
    _check_codes(codes, (-1, 0, 1))
    return _pack(codes.to(torch.int8) & 3, 2)


def unpack_ternary(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_ternary``: int8 ``[numel]`` in {-1, 0, 1}; the unused pattern 10
    raises ``ValueError``."""
    u = _unpack(packed, numel, 2).to(torch.int8)
    codes = (u ^ 2) - 2  # sign-extend 2-bit two's complement
    if bool((codes == -2).any()):
        raise ValueError("packed ternary codes contain the invalid pattern 0b10")
    return codes


def pack_binary(codes: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, +1} (``n`` elements) -> uint8 ``[ceil(n / 8)]``, 1 bit per code
    (1 = +1, 0 = -1)."""
    _check_codes(codes, (-1, 1))
    return _pack(codes.reshape(-1) > 0, 1)


def unpack_binary(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_binary``: int8 ``[numel]`` in {-1, +1}."""
    return _unpack(packed, numel, 1).to(torch.int8) * 2 - 1
