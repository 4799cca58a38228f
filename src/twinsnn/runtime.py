"""How training runs on this machine: the device, deterministic kernels, the forward's
precision, a model's memory format and LIF kernel, and glibc malloc."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
from torch import nn

from .errors import ConfigError
from .neurons import set_kernel

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use --device cpu")
    return torch.device(name)


def configure(train_cfg) -> tuple[torch.device, bool]:
    """Set up the process for ``train_cfg`` (a ``TrainConfig``): returns the device and whether
    kernels are deterministic (``train.deterministic``, by default on for CPU, off for CUDA)."""
    device = resolve_device(train_cfg.device)
    deterministic = train_cfg.deterministic
    if deterministic is None:
        deterministic = device.type == "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
    return device, deterministic


def place(model: nn.Module, train_cfg, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in the memory format (channels-last: NHWC convolutions, faster on
    CPU for these layer sizes) and with the LIF kernel and BatchNorm fusion that ``train_cfg``
    asks for."""
    set_kernel(model, "compiled" if train_cfg.compile else "eager", train_cfg.fuse_norm)
    fmt = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt)


def autocast(precision: str, device: torch.device, cache: bool = True):
    """The context of the training forward: bfloat16 autocast for ``bf16``, none for fp32;
    ``cache``: autocast's cache of cast weights (off for a CUDA graph's capture)."""
    return torch.autocast(device.type, torch.bfloat16, precision == "bf16", cache_enabled=cache)


def retain_freed_memory() -> bool:
    """Make glibc malloc keep the memory a training step frees, for the next step.

    By default every large activation is a fresh ``mmap`` that the kernel zero-fills page by
    page and ``free`` returns at once, so each step pays that again; on a 2-core CPU it is a
    third of a CIFARNet step. Serving large blocks from the heap (``M_MMAP_MAX = 0``) and
    never trimming it (``M_TRIM_THRESHOLD`` at its maximum) lets a step reuse the pages of the
    previous one; the resident memory then stays at its peak. Returns whether it applied
    (False off glibc, where nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
