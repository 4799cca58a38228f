"""The one atomic file writer, and the first line of an error for a one-line message.

Every file twinsnn writes whole (checkpoints, models, exports, caches, ``run.json``, figures)
goes through ``atomic_write``: a temporary file in the same folder, fsync, rename, fsync of
the folder; it gets the mode a plain ``open`` would give (0666 less the umask). This module
imports nothing of twinsnn but its errors: anything may import it.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from safetensors.torch import save

from .errors import WriteError


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, with the next when it ends in a colon (at
    most 200 characters), else the exception's type."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    if not lines or not lines[0]:
        return type(error).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text[:200]


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then fsync and rename it onto ``path`` and fsync the folder:
    the previous file stays intact until the new one is complete, and a crash leaves at most
    a stray temp file. A failed write (a full disk) raises ``WriteError``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        name = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
        tmp = name
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {path} ({e.strerror or first_line(e)}); "
                             "any previous version of it is kept") from None
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: Path, text: str) -> None:
    """``text`` as the whole of ``path``, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """``tensors`` and string ``metadata`` as a safetensors file, written by ``atomic_write``
    (safetensors' own writer gives every file mode 0600)."""
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
