"""Every registered data set (``twinsnn.data.DATASETS``) from files in its real on-disk format,
as the registry's test: the splits' shapes and dtypes, the labels as written, the classes,
the statistics, the model input and the ``check`` report.

A data set added to the registry needs its entry in ``FIXTURES`` below: a function that
writes a small copy of the data set in the format the loader reads (the official files'
format, fewer samples) and says what loading it must give. Without one,
``test_every_registered_data_set_has_a_fixture`` fails and names it.
"""
import dataclasses
import hashlib
import tarfile
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tiny_fmnist
from test_cifar import batch, py2_pickle, write_archive
from test_dvs import make_dataset
from test_image_folder import write_folder
from twinsnn.config import DataConfig
from twinsnn.data import DATASETS, build_data, cifar, fashion_mnist, tensor_datasets
from twinsnn.data.idx import read_idx_gz
from twinsnn.data.transforms import AUGMENTATIONS

TIMESTEPS = 3


@dataclass
class Written:
    """A data set written to disk, and what loading it must give."""

    cfg: DataConfig  # how to load it
    classes: int
    train: int  # samples in the training file(s), validation included
    test: int
    sample: tuple  # shape of one sample
    dtype: torch.dtype
    test_labels: list  # as written, in the order the loader keeps


def fashion_mnist_files(tmp_path, monkeypatch) -> Written:
    """The four IDX files, gzip-compressed (conftest.write_tiny_fmnist)."""
    folder = write_tiny_fmnist(tmp_path)
    labels = read_idx_gz(folder / fashion_mnist.FILES["test_labels"][0], None)
    return Written(DataConfig(name="fashion-mnist", dir=str(folder), verify=False, val_size=20),
                   10, 200, 60, (1, 28, 28), torch.uint8, labels.tolist())


def cifar_archive(name: str, fine: bool):
    """The official archive (Python 2 pickles of ``data``/``labels`` batches), with the
    registered entry's batch files holding fewer rows (its checksums are the archive's)."""

    def write(tmp_path, monkeypatch) -> Written:
        entry = DATASETS[name]
        small = dataclasses.replace(entry, train_files=tuple((f, 4) for f, _ in entry.train_files),
                                    test_files=tuple((f, 3) for f, _ in entry.test_files))
        members, labels, start = {}, {}, 0
        for file, rows in small.train_files + small.test_files:
            labels[file] = [(start + i) * 7 % entry.NUM_CLASSES for i in range(rows)]
            members[file] = py2_pickle(batch(rows, labels[file], fine=fine, start=start))
            start += rows
        path = tmp_path / entry.archive
        for key, value in write_archive(path, entry.folder, members).items():
            monkeypatch.setitem(cifar.CHECKSUMS, key, value)
        monkeypatch.setitem(DATASETS, name, small)
        test = sum((labels[f] for f, _ in small.test_files), [])
        return Written(DataConfig(name=name, dir=str(tmp_path), val_size=2), entry.NUM_CLASSES,
                       4 * len(small.train_files), len(test), (3, 32, 32), torch.uint8, test)

    return write


def cifar10_dvs_recordings(tmp_path, monkeypatch) -> Written:
    """AEDAT 2.0 recordings, one folder per class, 10 each (test_dvs.make_dataset), framed at
    ``TIMESTEPS`` steps; one recording per class goes to test (the 9:1 split)."""
    root = make_dataset(tmp_path / "CIFAR10-DVS")
    cfg = DataConfig(name="cifar10-dvs", dir=str(root), cache_dir=str(tmp_path / "cache"),
                     resolution=16, val_size=5)
    return Written(cfg, 10, 90, 10, (TIMESTEPS, 2, 16, 16), torch.float16, list(range(10)))


def image_folder_files(tmp_path, monkeypatch) -> Written:
    """``<split>/<class>/<image>.png`` (test_image_folder.write_folder: 3 classes, 12 training
    and 4 test images each, 8 x 12 RGB)."""
    written = write_folder(tmp_path / "pics")
    cfg = DataConfig(name="image-folder", dir=str(tmp_path / "pics"),
                     cache_dir=str(tmp_path / "cache"), val_size=6)
    return Written(cfg, 3, 36, 12, (3, 8, 12), torch.uint8, written["test"][1].tolist())


def cifar10_jpeg_archive(tmp_path, monkeypatch) -> Written:
    """``cifar10-jpeg.tar.gz`` holding ``cifar10-jpeg/<split>/<class>/<i>.jpg``, 32 x 32 JPEG
    images of the ten classes, with the registered entry's images per class (5,000 and
    1,000) and checksum (the real archive's) those of this small copy."""
    entry = DATASETS["cifar10-jpeg"]
    path, rng = tmp_path / "cifar10-jpeg.tar.gz", np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 2), ("test", 1)):
            for name in entry.CLASSES:
                for i in range(n):
                    image = tmp_path / f"{split}-{name}-{i}.jpg"
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        image, quality=75)
                    tar.add(image, f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "cifar10-jpeg", dataclasses.replace(
        entry, per_class=(2, 1), sha256=sha256))
    cfg = DataConfig(name="cifar10-jpeg", dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                     val_size=4)
    return Written(cfg, 10, 20, 10, (3, 32, 32), torch.uint8, list(range(10)))


FIXTURES = {
    "fashion-mnist": fashion_mnist_files,
    "cifar10": cifar_archive("cifar10", fine=False),
    "cifar100": cifar_archive("cifar100", fine=True),
    "cifar10-dvs": cifar10_dvs_recordings,
    "image-folder": image_folder_files,
    "cifar10-jpeg": cifar10_jpeg_archive,
}


def test_every_registered_data_set_has_a_fixture():
    missing = sorted(set(DATASETS) - set(FIXTURES))
    assert not missing, (f"data sets without a real-format fixture: {', '.join(missing)}; add "
                         "a writer of each to FIXTURES in tests/test_datasets.py")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_registered_data_set_loads_from_its_files(name, tmp_path, monkeypatch):
    if name not in FIXTURES:
        pytest.fail(f"{name} has no real-format fixture in tests/test_datasets.py FIXTURES")
    written = FIXTURES[name](tmp_path, monkeypatch)
    source = DATASETS[name]
    data = build_data(written.cfg, TIMESTEPS)

    assert data.name == name and data.num_classes == written.classes
    assert len(source.CLASSES) in (0, written.classes)  # names listed, or read from the files
    assert source.AUGMENTATION in AUGMENTATIONS
    assert len(data.train) + len(data.val) == written.train and len(data.val) == \
        written.cfg.val_size
    assert data.test.y.tolist() == written.test_labels
    for split in (data.train, data.val, data.test):
        assert split.x.shape[1:] == written.sample and split.x.dtype == written.dtype
        assert split.y.dtype == torch.int64 and len(split.x) == len(split.y)
        assert 0 <= int(split.y.min()) and int(split.y.max()) < written.classes
    channels = written.sample[-3]
    assert data.in_channels == channels and len(data.mean) == len(data.std) == channels

    train, val, test = tensor_datasets(data)  # model input: normalized float32
    x, y = test[:]
    assert x.dtype == torch.float32 and x.shape == (written.test, *written.sample)
    assert torch.isfinite(x).all() and torch.equal(y, data.test.y)
    usable, report = source.check(written.cfg)
    assert usable, report
