"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the official "python version" archives.

Either the archive (``cifar-10-python.tar.gz``) or its extracted folder (``cifar-10-batches-py/``)
is read, and every file is checked against its official MD5 unless ``data.verify`` is off (for
a re-packed copy). The batch files are pickles: they are parsed by an unpickler that can build
nothing but dicts, lists, strings, ints and numpy arrays made from the file's own bytes
(numpy's own unpickling code never sees the pickled state), so a tampered file can neither run
code nor make the loader allocate more than a bounded multiple of its size.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
import pickletools
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import store
from ..errors import DataError
from .idx import read_at_most
from .splits import Dataset

URL = "https://www.cs.toronto.edu/~kriz/"
# Official MD5 of each archive and of each batch file inside it, keyed by path in the archive.
CHECKSUMS = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
MEAN = (0.4914, 0.4822, 0.4465)  # paper 5.1.1, for CIFAR-10 and CIFAR-100 alike
STD = (0.2470, 0.2435, 0.2616)
IMAGE_BYTES = 3 * 32 * 32  # one row of ``data``: 1024 red, 1024 green, 1024 blue, row-major
MAX_BATCH_BYTES = 200 << 20  # the largest batch file (CIFAR-100 train) is about 155 MiB
MAX_PICKLE_OPS = 1 << 20  # the largest batch file has about 200,000 opcodes


class _ArrayClass:
    """Stands for ``numpy.ndarray`` inside a batch: usable only as ``_reconstruct``'s first
    argument, so a pickle cannot call ``ndarray(shape)`` to allocate memory it does not hold."""


class _Dtype:
    """Stands for a pickled ``numpy.dtype``: a plain number type given by name. Its pickled
    state is checked here and never reaches numpy, whose ``__setstate__`` trusts it."""

    def __init__(self, name, align=False, copy=False):
        dtype = np.dtype(name.decode("ascii") if isinstance(name, bytes) else str(name))
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"numpy dtype {dtype} is not a plain number type")
        self.dtype = dtype

    def __setstate__(self, state):
        """``(version, byteorder, subarray, names, fields, ...)``; only the byte order counts."""
        order = state[1] if isinstance(state, tuple) and len(state) >= 5 else None
        order = order.decode("latin-1") if isinstance(order, bytes) else order
        if order not in ("|", "<", ">", "=") or state[2:5] != (None, None, None):
            raise pickle.UnpicklingError("numpy dtype state is not a plain number type's")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _PendingArray:
    """What ``_reconstruct`` gives: an array that its pickled state, ``(version, shape, dtype,
    fortran_order, data_bytes)``, then fills once the bytes are checked to match the shape."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("numpy array state is not a 5-tuple")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(dtype, _Dtype) and fortran in (False, True)
                and isinstance(data, bytes)):
            raise pickle.UnpicklingError("numpy array state is malformed")
        if math.prod(shape) * dtype.dtype.itemsize != len(data):
            raise pickle.UnpicklingError(f"numpy array of shape {shape} does not match its "
                                         f"{len(data)} bytes")
        self.array = np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct_empty(cls, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` as the files use it: an empty array that the
    pickle's own bytes then fill."""
    if cls is not _ArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError("numpy array built other than from its own bytes")
    return _PendingArray()


_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_empty,  # as written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_empty,  # as written by numpy 2
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): _Dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the few numpy names a CIFAR batch refers to; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _GLOBALS:
            raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a CIFAR batch holds "
                                         "only numpy arrays, lists and strings")
        return _GLOBALS[(module, name)]


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def parse_batch(raw: bytes, name: str, rows: int, label_key: str, num_classes: int):
    """One pickled batch -> images uint8 ``[rows, 3, 32, 32]`` and labels int64 ``[rows]``.

    A first pass over the opcodes bounds their number and their memo indices, and checks that
    every length the stream declares is backed by bytes, before the unpickler allocates
    anything for it.
    """
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(raw)):
            if count >= MAX_PICKLE_OPS:
                raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPS} opcodes")
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg >= MAX_PICKLE_OPS:
                raise pickle.UnpicklingError(f"memo index {arg} is out of range")
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # untrusted bytes: any failure of the parser means a bad file
        raise DataError(f"{name}: not a readable CIFAR batch ({type(e).__name__}: {e}); "
                        "delete it and fetch it again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: holds a {type(batch).__name__}, not a CIFAR batch dict")
    entries = {k.decode("latin-1") if isinstance(k, bytes) else k:
               v.array if isinstance(v, _PendingArray) else v for k, v in batch.items()}
    data, labels = entries.get("data"), entries.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8
            and data.shape == (rows, IMAGE_BYTES)):
        raise DataError(f"{name}: 'data' should be a uint8 array of shape ({rows}, {IMAGE_BYTES}), "
                        f"found {_describe(data)}")
    if not (isinstance(labels, list) and len(labels) == rows
            and all(type(v) is int and 0 <= v < num_classes for v in labels)):
        raise DataError(f"{name}: {label_key!r} should be a list of {rows} labels in "
                        f"[0, {num_classes}), found {_describe(labels)}")
    return data.reshape(rows, 3, 32, 32), np.array(labels, dtype=np.int64)


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_bounded(f, name: str) -> bytes:
    raw = read_at_most(f, MAX_BATCH_BYTES)
    if len(raw) > MAX_BATCH_BYTES:
        raise DataError(f"{name}: larger than {MAX_BATCH_BYTES} bytes; not a CIFAR batch")
    return raw


@dataclass(frozen=True)
class Cifar:
    """One CIFAR variant; the instance is the registry entry (``NUM_CLASSES``, ``MEAN``,
    ``STD``, ``AUGMENTATION``, ``load``, ``check``)."""

    title: str
    key: str  # folder name used for downloads
    archive: str
    folder: str  # top folder inside the archive
    train_files: tuple[tuple[str, int], ...]  # (batch file, rows)
    test_files: tuple[tuple[str, int], ...]
    label_key: str
    NUM_CLASSES: int
    MEAN: tuple[float, ...] = MEAN
    STD: tuple[float, ...] = STD
    AUGMENTATION: str = "crop_flip"
    CLASSES: tuple[str, ...] = ()  # class names, where the variant has few enough to list

    @property
    def how_to_get(self) -> str:
        return (f"download {URL}{self.archive} (MD5 {CHECKSUMS[self.archive]}) into a folder and "
                "pass --data-dir (or set TWINSNN_DATA), or add --set data.download=true")

    def _members(self) -> list[str]:
        return [name for name, _ in self.train_files + self.test_files]

    def _holds(self, base: Path) -> Path | None:
        for folder in (base / self.folder, base):
            if all((folder / name).is_file() for name in self._members()):
                return folder
        return base / self.archive if (base / self.archive).is_file() else None

    def locate(self, data_dir: str | Path | None) -> Path | None:
        """The extracted folder holding every batch file, else the archive, in the first
        searched folder (``store.locate``) that has either; None if none has."""
        return store.locate(data_dir, self._holds)

    def _verify(self, where, key: str, got: str) -> None:
        expected = CHECKSUMS[key]
        if got != expected:
            raise DataError(f"{where}: MD5 is {got}, expected {expected} (official {key}); the "
                            f"file is corrupt or not the official one: delete it, then "
                            f"{self.how_to_get}")

    def _read_raw(self, source: Path, verify: bool) -> dict[str, bytes]:
        """The bytes of every batch file, from the extracted folder or the archive; with
        ``verify``, each file (and the archive) checked against its official MD5."""

        def checked(where, key: str, raw: bytes) -> bytes:
            if verify:
                self._verify(where, key, hashlib.md5(raw).hexdigest())
            return raw

        wanted = {f"{self.folder}/{name}": name for name in self._members()}
        raws = {}
        if source.is_dir():
            for key, name in wanted.items():
                path = source / name
                try:
                    with open(path, "rb") as f:
                        raws[name] = checked(path, key, _read_bounded(f, str(path)))
                except OSError as e:
                    raise DataError(f"{path}: cannot read ({e})") from None
            return raws
        try:
            if verify:
                self._verify(source, self.archive, md5_file(source))
            with tarfile.open(source, "r|gz") as tar:
                for member in tar:
                    name = wanted.get(member.name)
                    if name is None:
                        continue
                    if not member.isfile():
                        raise DataError(f"{source}: {member.name} is not a regular file")
                    where = f"{source}:{member.name}"
                    raws[name] = checked(where, member.name,
                                         _read_bounded(tar.extractfile(member), where))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{source}: not a readable tar.gz archive ({e}); delete it, then "
                            f"{self.how_to_get}") from None
        missing = [key for key, name in wanted.items() if name not in raws]
        if missing:
            raise DataError(f"{source}: archive lacks {', '.join(missing)}; {self.how_to_get}")
        return raws

    def read(self, source: Path, verify: bool) -> tuple[Dataset, Dataset]:
        """Train and test sets from a located folder or archive (MD5s checked with ``verify``)."""
        raws = self._read_raw(source, verify)

        def stack(files) -> Dataset:
            parts = [parse_batch(raws[name], f"{source}/{name}" if source.is_dir() else
                                 f"{source}:{self.folder}/{name}", rows, self.label_key,
                                 self.NUM_CLASSES) for name, rows in files]
            x = np.concatenate([images for images, _ in parts])
            y = np.concatenate([labels for _, labels in parts])
            return Dataset(torch.from_numpy(x), torch.from_numpy(y))

        return stack(self.train_files), stack(self.test_files)

    def download(self, target: Path) -> Path:
        """Fetch the archive into ``target`` (verified before it is renamed into place)."""
        return store.download(URL + self.archive, target / self.archive,
                              lambda tmp: self._verify(tmp, self.archive, md5_file(tmp)),
                              self.how_to_get)

    def load(self, cfg, timesteps: int | None = None):
        """Train and test sets as ``Dataset`` of uint8 ``[N, 3, 32, 32]`` (N = 50,000 and
        10,000) and int64 labels; ``timesteps`` matters only to event data.

        With ``cfg.download`` the archive is fetched into ``cfg.dir`` (or ``./data``)/<key>
        when found nowhere (and always checked); ``cfg.verify=False`` skips the MD5 check of
        local files, for a re-packed copy.
        """
        source = self.locate(cfg.dir)
        if source is None and cfg.download:
            source = self.download(Path(cfg.dir or "data") / self.key)
        if source is None:
            raise DataError(f"{self.title} not found (looked in {store.looked_in(cfg.dir)}); "
                            f"{self.how_to_get}")
        train, test = self.read(source, cfg.verify)
        return train, test, {"data_path": str(source)}

    def check(self, cfg) -> tuple[bool, str]:
        """(usable, report): where it looked, what it found, whether checksums and contents
        are right."""
        lines = [f"{self.title}: looked in {store.looked_in(cfg.dir)}"]
        source = self.locate(cfg.dir)
        if source is None:
            return False, "\n".join(lines + [f"  not found; {self.how_to_get}"])
        lines.append(f"  found {'folder' if source.is_dir() else 'archive'} {source}")
        try:
            train, test = self.read(source, cfg.verify)
        except DataError as e:
            return False, "\n".join(lines + [f"  FAILED: {e}"])
        checked = "MD5 ok" if cfg.verify else "MD5 not checked (data.verify=false)"
        lines.append(f"  {checked}; train {tuple(train.x.shape)}, test {tuple(test.x.shape)}, "
                     f"labels in [0, {self.NUM_CLASSES})")
        return True, "\n".join(lines)


CIFAR10 = Cifar(
    title="CIFAR-10", key="cifar10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
    train_files=tuple((f"data_batch_{i}", 10000) for i in range(1, 6)),
    test_files=(("test_batch", 10000),), label_key="labels", NUM_CLASSES=10,
    CLASSES=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"))
CIFAR100 = Cifar(
    title="CIFAR-100", key="cifar100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
    train_files=(("train", 50000),), test_files=(("test", 10000),), label_key="fine_labels",
    NUM_CLASSES=100)
