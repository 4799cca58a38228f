"""CIFAR10-DVS (Li et al. 2017): 10,000 DVS128 recordings of moving CIFAR-10 images.

The published recordings are AEDAT 2.0 files, ``<class>/cifar10_<class>_<i>.aedat``: ``#``
comment lines (the first ``#!AER-DAT2.0``), then big-endian 8-byte events, a 4-byte address and
a 4-byte timestamp in microseconds. Address bits as tonic's ``read_dvs_128`` reads them:
x = bits 8-14, y = bits 1-7, polarity = bit 0.

Each recording becomes ``T`` frames of equal duration (tonic's ``ToFrame(n_time_bins=T)``; here
the last frame also keeps the final event) with one channel per polarity, summed onto a
``resolution x resolution`` grid by binning coordinates. The data set has no official split:
a seeded random 9:1 split is drawn within each class. Framed tensors are cached on disk
(``data/cache.py``).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from . import cache, store
from ..errors import ConfigError, DataError
from .idx import read_file
from .splits import Dataset

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
# Frames hold raw event counts, not pixels in [0, 1]; the paper gives no statistics for them,
# so normalization leaves them as they are.
MEAN, STD = (0.0, 0.0), (1.0, 1.0)
AUGMENTATION = "rotate_shear"
SENSOR = 128  # DVS128: 128 x 128 pixels
HEADER = b"#!AER-DAT2.0"
MAX_FILE_BYTES = 64 << 20  # recordings are a few MiB; anything far larger is refused unread
MAX_HEADER_BYTES = 1 << 20  # their comment header is a few hundred bytes
MAX_COUNT = float(np.finfo(np.float16).max)  # counts saturate here rather than become inf
SPLIT = "random-per-class-9:1"
CACHE_VERSION = 2  # 2: the cache format of data/cache.py
HOW_TO_GET = ("download the ten class archives from https://figshare.com/articles/dataset/"
              "CIFAR10-DVS_New/4724671, unzip them into one folder (one subfolder per class) "
              "and pass --data-dir (or set TWINSNN_DATA)")


def read_aedat(path: Path) -> tuple[np.ndarray, ...]:
    """Events of one AEDAT 2.0 DVS128 file: ``x, y, p, t``, each ``[E]`` (t int64, in us)."""
    raw = read_file(path, MAX_FILE_BYTES, "a CIFAR10-DVS recording")
    if not raw.startswith(HEADER):
        raise DataError(f"{path}: not an AEDAT 2.0 file (does not start with {HEADER.decode()})")
    start = 0
    while start < len(raw) and raw[start] == ord("#"):
        if start > MAX_HEADER_BYTES:
            raise DataError(f"{path}: comment header longer than {MAX_HEADER_BYTES} bytes; "
                            "not a CIFAR10-DVS recording")
        end = raw.find(b"\n", start)
        if end < 0:
            raise DataError(f"{path}: header never ends; the file is truncated")
        start = end + 1
    body = len(raw) - start
    if body == 0:
        raise DataError(f"{path}: holds no events")
    if body % 8:
        raise DataError(f"{path}: {body} bytes of events is not a whole number of 8-byte events; "
                        "the file is truncated or corrupt")
    events = np.frombuffer(raw, dtype=">u4", offset=start).reshape(-1, 2)
    address, t = events[:, 0], events[:, 1].astype(np.int64)
    t += np.concatenate(([0], np.cumsum(np.diff(t) < -(1 << 31)))) << 32  # 32-bit wrap-around
    x = (address >> 8) & 0x7F
    y = (address >> 1) & 0x7F
    p = address & 0x1
    return x, y, p, t


def frame_events(x, y, p, t, timesteps: int, resolution: int) -> np.ndarray:
    """Events -> counts float16 ``[T, 2, R, R]``: frame ``i`` takes the events in the ``i``-th of
    ``T`` equal spans of [t_min, t_max]; channel = polarity; pixel = coordinate * R // 128."""
    span = int(t.max() - t.min()) + 1
    step = (t - t.min()) * timesteps // span
    row = y.astype(np.int64) * resolution // SENSOR
    col = x.astype(np.int64) * resolution // SENSOR
    index = ((step * 2 + p) * resolution + row) * resolution + col
    counts = np.bincount(index, minlength=timesteps * 2 * resolution * resolution)
    frames = np.minimum(counts, MAX_COUNT).astype(np.float16)
    return frames.reshape(timesteps, 2, resolution, resolution)


def _holds(folder: Path) -> Path | None:
    return folder if all((folder / c).is_dir() for c in CLASSES) else None


def locate(data_dir: str | Path | None) -> Path | None:
    """The searched folder (``store.locate``) that holds all ten class folders, or None."""
    return store.locate(data_dir, _holds)


def recordings(root: Path) -> list[tuple[Path, int]]:
    """``(file, label)`` of every ``<class>/cifar10_<class>_<i>.aedat``, by class then ``i``."""
    files = []
    for label, name in enumerate(CLASSES):
        pattern = re.compile(rf"cifar10_{name}_(\d+)\.aedat")
        found = [(int(m.group(1)), p) for p in (root / name).iterdir()
                 if (m := pattern.fullmatch(p.name)) and p.is_file()]
        if len(found) < 2:
            raise DataError(f"{root / name}: {len(found)} recordings cifar10_{name}_<i>.aedat; "
                            f"a class needs at least 2 for the 9:1 split; {HOW_TO_GET}")
        files += [(p, label) for _, p in sorted(found)]
    return files


def split_per_class(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded 9:1 split within each class: (train index, test index), each sorted; a class of
    ``n`` recordings gives ``max(1, round(n / 10))`` to test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        n_test = max(1, round(len(members) / 10))
        test.append(order[:n_test])
        train.append(order[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def cache_key(root: Path, files: list[tuple[Path, int]], timesteps: int, resolution: int) -> dict:
    """What a cache depends on: framing parameters and every file's name, size and mtime."""
    listing = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        entry = f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n"
        listing.update(entry.encode())
    return {"version": CACHE_VERSION, "timesteps": timesteps, "resolution": resolution,
            "recordings": len(files), "files_sha256": listing.hexdigest()}


def load(cfg, timesteps: int):
    """Train and test sets as ``Dataset`` of float16 event counts ``[N, T, 2, R, R]``
    (T = ``timesteps``, R = ``cfg.resolution``) and int64 labels, split 9:1 within each class
    by ``cfg.split_seed``; framing is read from the cache when one matches."""
    if not 0 < cfg.resolution <= SENSOR:
        raise ConfigError(f"data.resolution must be in [1, {SENSOR}] for CIFAR10-DVS, "
                          f"got {cfg.resolution}")
    root = locate(cfg.dir)
    if root is None:
        why = "automatic download is not offered for it; " if cfg.download else ""
        raise DataError(f"CIFAR10-DVS not found (looked in {store.looked_in(cfg.dir)}); "
                        f"{why}{HOW_TO_GET}")
    files = recordings(root)
    key = cache_key(root, files, timesteps, cfg.resolution)
    path = cache.cache_file(Path(cfg.cache_dir) if cfg.cache_dir else cache.default_dir(root),
                            f"cifar10-dvs-T{timesteps}-R{cfg.resolution}", key)
    cached = cache.read(path, key)
    if cached is None:
        x = np.empty((len(files), timesteps, 2, cfg.resolution, cfg.resolution), dtype=np.float16)
        for i, (file, _) in enumerate(files):
            x[i] = frame_events(*read_aedat(file), timesteps, cfg.resolution)
        y = np.array([label for _, label in files], dtype=np.int64)
        cache.write_or_warn(path, key, [y, x], None, "CIFAR10-DVS")
    else:
        (y, x), _ = cached
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    train_index, test_index = split_per_class(y, cfg.split_seed)
    provenance = {"data_folder": str(root), "split": SPLIT, "split_seed": cfg.split_seed,
                  "framing": "equal-time-bins", "resolution": cfg.resolution,
                  "recordings": len(files), "cache_file": str(path)}
    return (Dataset(x[train_index], y[train_index]), Dataset(x[test_index], y[test_index]),
            provenance)


def check(cfg) -> tuple[bool, str]:
    """(usable, report): where it looked, the recordings per class, and every file that fails
    to parse. Usable when every file parses and every class has recordings."""
    lines = [f"CIFAR10-DVS: looked in {store.looked_in(cfg.dir)}"]
    root = locate(cfg.dir)
    if root is None:
        return False, "\n".join(lines + [f"  not found; {HOW_TO_GET}"])
    lines.append(f"  found {root}")
    try:
        files = recordings(root)
    except DataError as e:
        return False, "\n".join(lines + [f"  FAILED: {e}"])
    counts = np.bincount([label for _, label in files], minlength=NUM_CLASSES)
    per_class = ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts))
    lines.append(f"  recordings per class: {per_class}")
    if set(counts) != {1000}:
        lines.append("  the published data set has 1000 per class; some are missing or extra")
    bad = []
    for file, _ in files:
        try:
            read_aedat(file)
        except DataError as e:
            bad.append(f"  FAILED: {e}")
    lines += bad
    lines.append(f"  {len(files) - len(bad)} of {len(files)} recordings are valid AEDAT 2.0")
    return not bad and all(counts), "\n".join(lines)
