"""CIFAR-10/100 loading from archives and folders written in the official on-disk format."""
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from twinsnn.config import DataConfig
from twinsnn.data import build_data, cifar, dataset_module
from twinsnn.errors import DataError


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official batches: protocol 2, every string
    as a byte string (SHORT_BINSTRING / BINSTRING), numpy arrays via numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch(rows: int, labels: list[int], data: np.ndarray | None = None, fine: bool = False,
          start: int = 0) -> dict:
    """A batch dict with the keys of the official files."""
    if data is None:
        data = np.zeros((rows, 3072), dtype=np.uint8)
        data[:, 0] = (np.arange(start, start + rows) % 251).astype(np.uint8)  # a row id
        data[:, 1024] = 7
    names = [f"image_{start + i}.png".encode() for i in range(rows)]
    if fine:
        return {b"filenames": names, b"batch_label": b"training batch 1 of 1",
                b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels], b"data": data}
    return {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
            b"filenames": names}


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def write_archive(path, folder: str, members: dict[str, bytes], level: int = 1) -> dict:
    """A .tar.gz with ``folder/<name>`` members; returns the MD5 of every member and the archive."""
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    sums = {f"{folder}/{name}": md5(raw) for name, raw in members.items()}
    sums[path.name] = md5(path.read_bytes())
    return sums


SMALL10 = dataclasses.replace(cifar.CIFAR10, train_files=(("data_batch_1", 6), ("data_batch_2", 4)),
                              test_files=(("test_batch", 5),))


def small_members(labels_per_file=None) -> dict[str, bytes]:
    labels_per_file = labels_per_file or {"data_batch_1": [0, 1, 2, 3, 4, 9],
                                          "data_batch_2": [5, 6, 7, 8],
                                          "test_batch": [9, 8, 7, 6, 5]}
    members, start = {}, 0
    for name, labels in labels_per_file.items():
        members[name] = py2_pickle(batch(len(labels), labels, start=start))
        start += len(labels)
    members["batches.meta"] = py2_pickle({b"label_names": [b"airplane"] * 10})
    return members


@pytest.fixture
def small_archive(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", small_members()).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    return path


def test_registry_entries():
    assert dataset_module("cifar10") is cifar.CIFAR10
    assert dataset_module("cifar100") is cifar.CIFAR100
    for source, classes in ((cifar.CIFAR10, 10), (cifar.CIFAR100, 100)):
        assert source.NUM_CLASSES == classes
        assert source.MEAN == (0.4914, 0.4822, 0.4465) and source.STD == (0.2470, 0.2435, 0.2616)
        assert source.AUGMENTATION == "crop_flip"


@pytest.mark.slow
def test_cifar10_full_size_archive(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = {name: rng.integers(0, 10, 10000).tolist()
              for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    members = {name: py2_pickle(batch(10000, lab, start=10000 * i))
               for i, (name, lab) in enumerate(labels.items())}
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    monkeypatch.setenv("TWINSNN_DATA", str(tmp_path))
    splits = build_data(DataConfig(name="cifar10", val_size=0), timesteps=5)
    assert len(splits.train) == 50000 and len(splits.test) == 10000
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape[1:] == (3, 32, 32)
    assert splits.in_channels == 3 and splits.image_size == (32, 32)
    assert splits.split["data_path"] == str(path)
    train, test = splits.train, splits.test
    expected = sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert train.y.dtype == torch.int64 and train.y.tolist() == expected
    assert test.y.tolist() == labels["test_batch"]
    ids = (torch.arange(50000) % 251).to(torch.uint8)
    assert torch.equal(train.x[:, 0, 0, 0], ids)  # file order kept, batch 1 first
    assert bool((train.x[:, 1, 0, 0] == 7).all())  # byte 1024 is green (0, 0)


@pytest.mark.slow
def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    fine = {"train": rng.integers(0, 100, 50000).tolist(),
            "test": rng.integers(0, 100, 10000).tolist()}
    members = {name: py2_pickle(batch(len(lab), lab, fine=True)) for name, lab in fine.items()}
    members["meta"] = py2_pickle({b"fine_label_names": [], b"coarse_label_names": []})
    path = tmp_path / "sub" / "cifar-100-python.tar.gz"
    path.parent.mkdir()
    for key, value in write_archive(path, "cifar-100-python", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    train, test, provenance = cifar.CIFAR100.load(DataConfig(dir=str(tmp_path)), None)
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert train.y.tolist() == fine["train"] and test.y.tolist() == fine["test"]
    assert int(train.y.max()) >= 20  # not the 20 coarse classes
    assert provenance["data_path"] == str(path)


def test_pixel_layout_is_channel_then_row_major(tmp_path, monkeypatch):
    data = np.zeros((6, 3072), dtype=np.uint8)
    for channel, value in enumerate((10, 20, 30)):
        data[0, channel * 1024 + 1 * 32 + 2] = value  # row 1, column 2
    members = small_members()
    members["data_batch_1"] = py2_pickle(batch(6, [0] * 6, data=data))
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    train, _, _ = SMALL10.load(DataConfig(dir=str(tmp_path)), None)
    assert train.x[0, :, 1, 2].tolist() == [10, 20, 30]
    assert int(train.x[0].sum()) == 60


def test_extracted_folder_matches_archive(tmp_path, small_archive, monkeypatch):
    from_archive = SMALL10.load(DataConfig(dir=str(tmp_path)), None)
    extracted = tmp_path / "elsewhere"
    with tarfile.open(small_archive) as tar:
        tar.extractall(extracted, filter="data")
    small_archive.unlink()
    for cfg_dir in (extracted, extracted / "cifar-10-batches-py"):
        train, test, provenance = SMALL10.load(DataConfig(dir=str(cfg_dir)), None)
        assert provenance["data_path"] == str(extracted / "cifar-10-batches-py")
        assert torch.equal(train.x, from_archive[0].x) and torch.equal(test.y, from_archive[1].y)
    monkeypatch.setenv("TWINSNN_DATA", str(tmp_path))  # found in a subfolder of $TWINSNN_DATA
    assert len(SMALL10.load(DataConfig(), None)[0]) == 10
    ok, report = SMALL10.check(DataConfig(dir=str(extracted)))
    assert ok and "MD5 ok" in report


def test_wrong_archive_checksum_names_file_and_expected(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_archive(path, "cifar-10-batches-py", small_members())
    with pytest.raises(DataError) as err:
        cifar.CIFAR10.load(DataConfig(dir=str(tmp_path)), None)
    assert str(path) in str(err.value) and "c58f30108f718f92721af3b95e74349a" in str(err.value)
    ok, report = cifar.CIFAR10.check(DataConfig(dir=str(tmp_path)))
    assert not ok and "FAILED" in report and "c58f30108f718f92721af3b95e74349a" in report


def test_corrupt_extracted_batch_names_file_and_expected(tmp_path, small_archive):
    with tarfile.open(small_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    small_archive.unlink()
    victim = tmp_path / "x" / "cifar-10-batches-py" / "data_batch_2"
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        SMALL10.load(DataConfig(dir=str(tmp_path / "x")), None)
    assert str(victim) in str(err.value)
    assert cifar.CHECKSUMS["cifar-10-batches-py/data_batch_2"] in str(err.value)


def test_truncated_archive(tmp_path, small_archive, monkeypatch):
    raw = small_archive.read_bytes()
    small_archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="MD5 is") as err:  # the official checksum catches it
        SMALL10.load(DataConfig(dir=str(tmp_path)), None)
    assert str(small_archive) in str(err.value)
    monkeypatch.setitem(cifar.CHECKSUMS, small_archive.name, md5(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="not a readable tar.gz") as err:
        SMALL10.load(DataConfig(dir=str(tmp_path)), None)
    assert str(small_archive) in str(err.value)


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').system('true')",)


@pytest.mark.parametrize("payload", ["system", "eval", "huge_array", "ndarray_call", "huge_bytes"])
def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, payload):
    marker = tmp_path / "pwned"
    evil = {
        "system": RunsCommand(f"touch {marker}"),
        "eval": CallsEval(),
    }.get(payload)
    if evil is not None:
        raw = py2_pickle({b"data": evil, b"labels": [0] * 6})
    elif payload == "huge_array":  # _reconstruct asked for a 1 TB array up front
        raw = (b"\x80\x02}U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
               b"\x8a\x05\x00\x10\xa5\xd4\xe8\x85U\x01b\x87Rs.")
    elif payload == "ndarray_call":  # numpy.ndarray((10**12,), 'u1') called directly
        raw = b"\x80\x02}U\x04datacnumpy\nndarray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85U\x02u1\x86Rs."
    else:  # a byte string that claims 1 TiB but holds 3 bytes
        raw = b"\x80\x04}\x8c\x04data\x8e" + (1 << 40).to_bytes(8, "little") + b"abc"
    members = small_members()
    members["data_batch_1"] = raw
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    with pytest.raises(DataError) as err:
        SMALL10.load(DataConfig(dir=str(tmp_path)), None)
    assert "data_batch_1" in str(err.value)
    if payload == "system":
        assert "system" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["shape", "dtype", "label_range", "label_count", "not_dict",
                                  "no_labels"])
def test_malformed_batch_contents(tmp_path, monkeypatch, case):
    labels = [0, 1, 2, 3, 4, 9]
    good = batch(6, labels)
    content = {
        "shape": {**good, b"data": np.zeros((6, 3000), dtype=np.uint8)},
        "dtype": {**good, b"data": np.zeros((6, 3072), dtype=np.float32)},
        "label_range": {**good, b"labels": [0, 1, 2, 3, 4, 10]},
        "label_count": {**good, b"labels": labels[:5]},
        "not_dict": [good],
        "no_labels": {k: v for k, v in good.items() if k != b"labels"},
    }[case]
    members = small_members()
    members["data_batch_1"] = py2_pickle(content)
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    with pytest.raises(DataError, match="data_batch_1"):
        SMALL10.load(DataConfig(dir=str(tmp_path)), None)


def test_archive_missing_a_batch(tmp_path, monkeypatch):
    members = small_members()
    del members["data_batch_2"]
    path = tmp_path / "cifar-10-python.tar.gz"
    for key, value in write_archive(path, "cifar-10-batches-py", members).items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_2"):
        SMALL10.load(DataConfig(dir=str(tmp_path)), None)


def test_not_found_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINSNN_DATA", raising=False)
    with pytest.raises(DataError, match="CIFAR-100 not found") as err:
        cifar.CIFAR100.load(DataConfig(dir=str(tmp_path)), None)
    assert "cifar-100-python.tar.gz" in str(err.value) and str(tmp_path) in str(err.value)
    ok, report = cifar.CIFAR100.check(DataConfig(dir=str(tmp_path)))
    assert not ok and str(tmp_path) in report and "not found" in report


def test_download_is_verified_then_renamed(tmp_path, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    sums = write_archive(server / "cifar-10-python.tar.gz", "cifar-10-batches-py", small_members())
    monkeypatch.setattr(cifar, "URL", server.as_uri() + "/")
    monkeypatch.delenv("TWINSNN_DATA", raising=False)
    target = tmp_path / "data"
    with pytest.raises(DataError, match="c58f30108f718f92721af3b95e74349a"):  # official MD5
        SMALL10.load(DataConfig(dir=str(target), download=True), None)
    assert not list(target.rglob("*.tar.gz*"))  # the rejected .part is gone
    for key, value in sums.items():
        monkeypatch.setitem(cifar.CHECKSUMS, key, value)
    train, _, provenance = SMALL10.load(DataConfig(dir=str(target), download=True), None)
    assert provenance["data_path"] == str(target / "cifar10" / "cifar-10-python.tar.gz")
    assert len(train) == 10
    assert [p.name for p in target.rglob("*.tar.gz*")] == ["cifar-10-python.tar.gz"]
