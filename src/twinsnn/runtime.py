"""Process-wide settings for a training process."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


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
