"""CIFAR-10 (JPEG q75 copy) from the real archive (``--real-data=DIR``, as .ci/run gives it):
a slice of it through the image-folder reader (class counts, shapes, pixels as Pillow decodes
them, a short training run whose loss falls), and the whole archive as ``cifar10-jpeg``."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import twinsnn
from test_cli import cli
from twinsnn.config import DataConfig
from twinsnn.data import build_data, image_folder

PER_CLASS = {"train": 100, "test": 20}  # the slice: images 0000-0099 and 0000-0019 per class
# (split, class, file): pixels at (row, column) 0,0 / 16,16 / 31,31 as Pillow 13 decodes them
KNOWN = {("train", "airplane", "0000.jpg"): ([200, 202, 197], [8, 7, 12], [236, 236, 238]),
         ("test", "cat", "0007.jpg"): ([39, 40, 61], [196, 193, 204], [5, 23, 7])}


def real_entries(source: Path):
    """``(split, class, file name, bytes)`` of every image of the real copy."""
    if source.is_dir():
        entries = [(name, is_dir, path and path.read_bytes())
                   for name, is_dir, path in image_folder.list_folder(source)]
    else:
        entries = image_folder.read_archive(source)
    for name, is_dir, raw in entries:
        parts = name.strip("/").split("/")[-3:]
        if not is_dir and len(parts) == 3 and parts[0] in PER_CLASS:
            yield (*parts, raw)


@pytest.fixture(scope="module")
def real_slice(cifar10_jpeg, tmp_path_factory):
    """``(archive, {(split, class, file): bytes})``: a .tar.gz of the slice, as the real
    archive holds it (``cifar10-jpeg/<split>/<class>/<file>``)."""
    archive = tmp_path_factory.mktemp("slice") / "slice.tar.gz"
    kept = {}
    with tarfile.open(archive, "w:gz") as out:
        for split, name, file, raw in real_entries(cifar10_jpeg):
            if int(Path(file).stem) < PER_CLASS[split]:
                kept[split, name, file] = raw
                info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{file}")
                info.size = len(raw)
                out.addfile(info, io.BytesIO(raw))
    return archive, kept


def test_slice_counts_shapes_and_pixels_as_pillow_decodes_them(real_slice, tmp_path):
    archive, kept = real_slice
    train, test, provenance = image_folder.IMAGE_FOLDER.load(
        DataConfig(name="image-folder", dir=str(archive), cache_dir=str(tmp_path)))
    assert tuple(provenance["classes"]) == image_folder.CIFAR10_JPEG.CLASSES
    for split, data in (("train", train), ("test", test)):
        assert data.x.shape == (10 * PER_CLASS[split], 3, 32, 32)
        assert data.y.bincount().tolist() == [PER_CLASS[split]] * 10
    index = {key: i for i, key in enumerate(sorted(k for k in kept if k[0] == "train"),)}
    index.update({key: i for i, key in enumerate(sorted(k for k in kept if k[0] == "test"))})
    for key, raw in kept.items():
        data = train if key[0] == "train" else test
        with Image.open(io.BytesIO(raw)) as image:
            want = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(data.x[index[key]].numpy(), want), key
    for key, (corner, centre, last) in KNOWN.items():
        x = (train if key[0] == "train" else test).x[index[key]]
        assert [x[:, 0, 0].tolist(), x[:, 16, 16].tolist(), x[:, 31, 31].tolist()] == \
            [corner, centre, last]


def test_a_short_training_run_on_real_images_lowers_the_loss(real_slice, tmp_path):
    archive, _ = real_slice
    run = twinsnn.fit("cifarnet", "image-folder", config="fmnist-cpu", dir=str(archive),
                      cache_dir=str(tmp_path / "cache"), val_size=100, augment=False,
                      width=0.0625, timesteps=2, epochs=3, batch_size=30, lr=0.005,
                      lr_step_unit="epoch", compile=False, out_dir=str(tmp_path), name="real",
                      progress=False)
    losses = [m["train_loss"] for m in run.metrics]
    assert losses[2] < losses[1] < losses[0], losses
    assert run.metrics[-1]["val_accuracy/0"] > 0.15  # chance: 0.10


def test_the_whole_copy_as_cifar10_jpeg(cifar10_jpeg, cifar10_jpeg_home, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(cifar10_jpeg_home))
    splits = build_data(DataConfig(name="cifar10-jpeg", dir=str(cifar10_jpeg)), 2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45000, 5000, 10000)
    assert splits.test.y.bincount().tolist() == [1000] * 10
    assert torch.cat([splits.train.y, splits.val.y]).bincount().tolist() == [5000] * 10
    assert splits.split["cache_file"].startswith(str(cifar10_jpeg_home))
    assert np.allclose(splits.mean, (0.4914, 0.4822, 0.4465), atol=1e-3)  # the originals'
    proc = cli(capsys, "data", "check", "cifar10-jpeg", "--data-dir", cifar10_jpeg.parent)
    assert proc.returncode == 0, proc.stdout
    assert "50000 training and 10000 test images of 3x32x32" in proc.stdout
    assert "airplane 5000/1000" in proc.stdout and "truck 5000/1000" in proc.stdout
