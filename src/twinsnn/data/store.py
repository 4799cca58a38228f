"""The data store: where a data set's files are found, and how they are fetched; one rule
for every data set.

The files are looked for in ``--data-dir`` (``data.dir``) if given, else in ``$TWINSNN_DATA``
if set, else in the data set's system folders (Debian's packages); in that folder itself or
in one of its direct subfolders, the first (in sorted order) that holds them all; or, for a
data set kept in one file (an archive), that file itself.
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Callable

from ..files import atomic_write
from ..errors import DataError


def _search_dirs(data_dir: str | Path | None, system: tuple[Path, ...]) -> list[Path]:
    """The folders searched: ``data_dir``, else ``$TWINSNN_DATA``, else ``system``."""
    if data_dir:
        return [Path(data_dir)]
    if os.environ.get("TWINSNN_DATA"):
        return [Path(os.environ["TWINSNN_DATA"])]
    return list(system)


def locate(data_dir: str | Path | None, holds: Callable[[Path], Path | None],
           system: tuple[Path, ...] = ()) -> Path | None:
    """The first ``holds(folder)`` that is not None, for each searched folder and then each of
    its direct subfolders (or ``holds(file)`` where a file was named); None when nothing
    holds the data."""
    for d in _search_dirs(data_dir, system):
        if d.is_file():
            found = holds(d)
            if found is not None:
                return found
        if not d.is_dir():
            continue
        for folder in [d, *sorted(p for p in d.iterdir() if p.is_dir())]:
            found = holds(folder)
            if found is not None:
                return found
    return None


def looked_in(data_dir: str | Path | None, system: tuple[Path, ...] = ()) -> str:
    """The searched folders for a report: each marked when missing; or why there were none."""
    dirs = _search_dirs(data_dir, system)
    if not dirs:
        return "no folder (no --data-dir given and TWINSNN_DATA not set)"
    listed = ", ".join(f"{d}" if d.is_dir() else f"{d} (missing)" for d in dirs)
    return listed + (" and its subfolders" if len(dirs) == 1 else " and their subfolders")


def download(url: str, dest: Path, verify: Callable[[Path], object], how_to_get: str) -> Path:
    """Fetch ``url`` into ``dest``: written to a temporary file, ``verify(temporary)`` (which
    raises ``DataError`` on a mismatch), then renamed, so ``dest`` only ever holds a checked
    file."""

    def fetch(tmp: str) -> None:
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            raise DataError(f"could not download {url} ({e}); {how_to_get}") from None
        verify(Path(tmp))

    atomic_write(dest, fetch)
    return dest
