import gzip

import numpy as np
import pytest
import torch

from twinsnn.config import DataConfig
from twinsnn.data import build_data, fashion_mnist
from twinsnn.data.idx import parse_idx, read_idx_gz
from twinsnn.data.transforms import normalize, random_crop_flip
from twinsnn.errors import DataError

from conftest import write_idx_gz


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx_gz(tmp_path / "a.gz", arr)
    out = read_idx_gz(tmp_path / "a.gz")
    assert out.dtype == torch.uint8 and out.tolist() == arr.tolist()


def test_idx_checksum_is_on_decompressed_bytes(tmp_path):
    write_idx_gz(tmp_path / "a.gz", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match="expected 00ff"):
        read_idx_gz(tmp_path / "a.gz", sha256="00ff")


@pytest.mark.parametrize("raw,match", [
    (b"\x00\x00\x08\x03" + (10**9).to_bytes(4, "big") * 3, "truncated or corrupt"),
    (b"\x01\x02\x08\x01", "magic"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "element type"),
    (b"\x00\x00\x08\x09", "dimensions"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
])
def test_idx_rejects_bad_headers_without_allocating(raw, match):
    with pytest.raises(DataError, match=match):
        parse_idx(raw)


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx_gz(tmp_path / "a.gz", np.zeros((50, 28, 28), np.uint8))
    data = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "a.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="a.gz"):
        read_idx_gz(tmp_path / "a.gz")


def test_loader_and_seeded_validation_split(tiny_fmnist):
    cfg = DataConfig(dir=str(tiny_fmnist), val_size=50, verify=False)
    data = build_data(cfg, timesteps=5)
    assert data.train.x.shape == (150, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.val.x.shape == (50, 1, 28, 28) and data.test.x.shape == (60, 1, 28, 28)
    assert data.train.y.dtype == torch.int64 and int(data.train.y.max()) < 10
    again = build_data(cfg, timesteps=5)
    assert torch.equal(again.val.x, data.val.x)
    other = build_data(DataConfig(dir=str(tiny_fmnist), val_size=50, val_seed=1, verify=False), 5)
    assert not torch.equal(other.val.y, data.val.y)
    assert data.split == {"val_size": 50, "val_seed": 0, "train_size": 150,
                          "data_folder": str(tiny_fmnist)}


def test_generated_files_fail_the_official_checksum(tiny_fmnist):
    with pytest.raises(DataError, match="SHA-256"):
        build_data(DataConfig(dir=str(tiny_fmnist), val_size=10), timesteps=5)


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="looked in .*empty.*apt-get install"):
        build_data(DataConfig(dir=str(tmp_path / "empty")), timesteps=5)


def test_crop_flip_is_a_shifted_window_and_flip():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(x, g, pad=2, flip_p=0.5)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):  # each output is some window of the padded image, maybe mirrored
        found = any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1))
                    for i in range(5) for j in range(5) for w in [padded[b, :, i:i + 6, j:j + 6]])
        assert found
    again = random_crop_flip(x, torch.Generator().manual_seed(3), pad=2, flip_p=0.5)
    assert torch.equal(out, again)


def test_flip_always_and_no_shift():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(random_crop_flip(x, torch.Generator(), pad=0, flip_p=1.0), x.flip(-1))


def test_normalize_per_channel():
    x = torch.ones(1, 2, 2, 2)
    out = normalize(x, (0.5, 1.0), (0.25, 2.0))
    assert out[0, 0].unique().tolist() == [2.0] and out[0, 1].unique().tolist() == [0.0]


@pytest.mark.slow
@pytest.mark.fmnist
def test_real_fashion_mnist_checksums_and_sizes():
    cfg = DataConfig(val_size=5000)
    data = build_data(cfg, timesteps=5)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    mean = data.train.x.float().div(255).mean().item()
    assert abs(mean - fashion_mnist.MEAN[0]) < 2e-3


def test_check_passes_intact_files_and_fails_a_corrupt_one(tiny_fmnist):
    ok, report = fashion_mnist.check(DataConfig(dir=str(tiny_fmnist), verify=False))
    assert ok and f"found in {tiny_fmnist}" in report and "(60, 28, 28)" in report
    ok, report = fashion_mnist.check(DataConfig(dir=str(tiny_fmnist)))  # not the official bytes
    assert not ok and "FAILED" in report and "SHA-256" in report
    victim = tiny_fmnist / fashion_mnist.FILES["test_labels"][0]
    victim.write_bytes(victim.read_bytes()[:-5])
    ok, report = fashion_mnist.check(DataConfig(dir=str(tiny_fmnist), verify=False))
    assert not ok and f"{victim.name}: FAILED" in report
