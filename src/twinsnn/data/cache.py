"""Decoded samples cached on disk, so that a data set is decoded once and later runs read
memory-sized arrays back instead (event frames, images of an image folder).

A cache file is one JSON header line, ``{"key", "meta", "arrays": [[dtype, shape], ...],
"sha256"}``, then the arrays' bytes in order. It is trusted only when its key equals the one
asked for (what the data was made from: file names, sizes, times, settings), its size is
what the header's shapes say and its bytes hash to the header's SHA-256; anything else reads
as no cache. It is written atomically (``files.atomic_write``): a crash leaves either no
cache or a whole one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import WriteError
from ..files import atomic_write

DTYPES = ("|u1", "<i8", "<f2")  # uint8 pixels, int64 labels, float16 event counts
MAX_HEADER_BYTES = 1 << 20  # a key and the class names of a large data set


def default_dir(root: Path) -> Path:
    """``<data folder>/cache`` where the data folder is writable, else ``~/.cache/twinsnn``.
    A folder without write permission counts as read-only for root too (who could write)."""
    writable = os.access(root, os.W_OK) and root.stat().st_mode & 0o222
    return root / "cache" if writable else Path.home() / ".cache" / "twinsnn"


def cache_file(folder: Path, stem: str, key: dict) -> Path:
    """``<folder>/<stem>-<digest of key>.bin``: one file per key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{stem}-{digest}.bin"


def read(path: Path, key: dict) -> tuple[list[np.ndarray], dict] | None:
    """The arrays and the ``meta`` dict of the cache at ``path``, or None when it is missing,
    written for another key, of the wrong size or fails its SHA-256."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline(MAX_HEADER_BYTES))
            if not isinstance(header, dict) or header.get("key") != key:
                return None
            specs = [(np.dtype(d), tuple(s)) for d, s in header["arrays"]]
            if any(d.str not in DTYPES or not all(type(n) is int and n >= 0 for n in s)
                   for d, s in specs):
                return None
            sizes = [d.itemsize * math.prod(s) for d, s in specs]
            if os.fstat(f.fileno()).st_size != f.tell() + sum(sizes):
                return None
            payload = bytearray(sum(sizes))
            if f.readinto(payload) != len(payload):
                return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        return None
    arrays, offset = [], 0
    for (dtype, shape), size in zip(specs, sizes):
        arrays.append(np.frombuffer(payload, dtype, math.prod(shape), offset).reshape(shape))
        offset += size
    return arrays, header.get("meta") or {}


def write(path: Path, key: dict, arrays: list[np.ndarray], meta: dict | None = None) -> None:
    """``arrays`` (little-endian, of the ``DTYPES``) and ``meta`` under ``key``, atomically."""
    arrays = [np.ascontiguousarray(a, a.dtype.newbyteorder("<")) for a in arrays]
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(memoryview(a).cast("B"))
    header = json.dumps({"key": key, "meta": meta or {},
                         "arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
                         "sha256": digest.hexdigest()}).encode()

    def write_to(tmp):
        with open(tmp, "wb") as f:
            f.write(header + b"\n")
            for a in arrays:
                f.write(memoryview(a).cast("B"))

    atomic_write(path, write_to)


def write_or_warn(path: Path, key: dict, arrays: list[np.ndarray], meta: dict | None,
                  what: str) -> None:
    """``write``; a cache that cannot be written (a full disk) is a warning, not an error:
    the data in memory is whole, only the next run decodes it again."""
    try:
        write(path, key, arrays, meta)
    except WriteError as e:
        warnings.warn(f"could not write the {what} cache ({e}); the next run decodes the "
                      "data again", stacklevel=3)
