"""Reader for the IDX format of (Fashion-)MNIST, bounded against hostile headers."""
from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

_IDX_DTYPES = {0x08: np.uint8}
MAX_IDX_BYTES = 1 << 31  # no IDX file of any data set here comes near 2 GiB


def read_at_most(f, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the binary stream ``f``, read in chunks so that memory
    follows what the stream holds rather than ``limit``; callers refuse a longer result."""
    raw = bytearray()
    while len(raw) <= limit:
        chunk = f.read(min(1 << 20, limit + 1 - len(raw)))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


def read_file(path: Path, limit: int, kind: str) -> bytes:
    """The bytes of the file at ``path``; ``DataError`` naming it when it cannot be read or
    holds more than ``limit`` bytes (then it is not ``kind``), read no further than that."""
    try:
        with open(path, "rb") as f:
            raw = read_at_most(f, limit)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > limit:
        raise DataError(f"{path}: larger than {limit} bytes; not {kind}")
    return raw


def read_idx_gz(path: Path, sha256: str | None = None) -> torch.Tensor:
    """Decompress and parse one ``.gz`` IDX file into a uint8 tensor of its declared shape.

    ``sha256`` is checked on the decompressed bytes (so a re-compressed copy still passes).
    Raises ``DataError`` naming the file on any truncation, corruption or mismatch.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = read_at_most(f, MAX_IDX_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); delete it and fetch it again") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataError(f"{path}: decompresses to more than {MAX_IDX_BYTES} bytes; not an IDX file")
    if sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != sha256:
            raise DataError(f"{path}: SHA-256 of the decompressed data is {got}, expected "
                            f"{sha256}; delete it and fetch it again")
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "IDX data") -> torch.Tensor:
    """Parse IDX bytes: ``00 00 <dtype> <ndim>``, ndim big-endian uint32 sizes, then data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in _IDX_DTYPES:
        raise DataError(f"{name}: unsupported IDX element type 0x{dtype:02x} (expected unsigned byte)")
    if not 1 <= ndim <= 4:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions (expected 1 to 4)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=object))
    if len(raw) - header != count:
        raise DataError(f"{name}: header declares shape {shape} ({count} bytes) but the file "
                        f"holds {len(raw) - header} bytes of data; the file is truncated or corrupt")
    array = np.frombuffer(raw, dtype=_IDX_DTYPES[dtype], offset=header).reshape(shape)
    return torch.from_numpy(array.copy())
