"""Image folders (``<split>/<class>/<image>``) in a folder or an archive, as a user keeps them:
PNG, JPEG and BMP files written by Pillow, read back through the loader, the cache, the API and
the command line; every bad folder a one-line error with nothing cached."""
import dataclasses
import io
import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import twinsnn
from test_cli import assert_one_line_error, cli
from twinsnn.config import DataConfig
from twinsnn.data import build_data, cache, dataset_module, image_folder
from twinsnn.data.transforms import AUGMENTATIONS
from twinsnn.errors import DataError, TwinsnnError

CLASSES = ("ant", "bee", "cat")
COUNTS = {"train": 12, "test": 4}  # images per class
TINY = ["--set", "width=0.0625", "--set", "train.compile=false", "--set", "epochs=1",
        "--set", "batch_size=8", "--set", "val_size=6", "--set", "eval_batch_size=50",
        "--set", "timesteps=2", "--quiet"]


def pixels(label: int, i: int, size=(8, 12), channels=3) -> np.ndarray:
    """A learnable image ``[H, W, C]``: class in the top half, ``i`` below."""
    rng = np.random.default_rng(100 * label + i)
    x = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
    x[: size[0] // 2] = 40 + 80 * label
    return x


def write_folder(root, ext="png", channels=3, counts=COUNTS):
    """``root/{train,test}/<class>/<i>.<ext>``; returns ``{split: (x [N, C, H, W], y)}`` as
    written, classes in sorted order, images by name."""
    written = {}
    for split, n in counts.items():
        xs, ys = [], []
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                x = pixels(label, i, channels=channels)
                Image.fromarray(x[..., 0] if channels == 1 else x).save(
                    root / split / name / f"{i:03d}.{ext}")
                xs.append(x.transpose(2, 0, 1))
                ys.append(label)
        written[split] = (np.stack(xs), np.array(ys))
    return written


def pack(root, archive):
    """An archive of ``root``'s splits inside one top folder, as archives usually are."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for path in sorted(root.rglob("*")):
                z.write(path, f"pics/{path.relative_to(root)}")
    else:
        mode = {".tar": "w", ".gz": "w:gz", ".tgz": "w:gz"}[archive.suffix]
        with tarfile.open(archive, mode) as t:
            t.add(root, "pics")
    return archive


def data_cfg(source, tmp_path, **kw):
    return DataConfig(name="image-folder", dir=str(source), cache_dir=str(tmp_path / "cache"),
                      **kw)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pics"
    return root, write_folder(root)


def test_registry_entries():
    assert dataset_module("image-folder") is image_folder.IMAGE_FOLDER
    c10 = dataset_module("cifar10-jpeg")
    assert c10 is image_folder.CIFAR10_JPEG and c10.NUM_CLASSES == 10
    assert c10.CLASSES[:3] == ("airplane", "automobile", "bird")
    assert c10.AUGMENTATION == "crop_flip" in AUGMENTATIONS


@pytest.mark.parametrize("form", ["folder", "pics.tar", "pics.tar.gz", "pics.zip"])
def test_folder_and_archives_give_the_images_written(folder, tmp_path, form):
    root, written = folder
    source = root if form == "folder" else pack(root, tmp_path / form)
    train, test, provenance = image_folder.IMAGE_FOLDER.load(data_cfg(source, tmp_path))
    for got, split in ((train, "train"), (test, "test")):
        assert got.x.dtype == torch.uint8 and got.y.dtype == torch.int64
        assert np.array_equal(got.x.numpy(), written[split][0])  # PNG: lossless
        assert got.y.tolist() == written[split][1].tolist()
    assert provenance["classes"] == list(CLASSES)
    x = written["train"][0] / 255.0
    assert np.allclose(provenance["mean"], x.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(provenance["std"], x.std(axis=(0, 2, 3)), atol=1e-12)


def test_grayscale_images_have_one_channel(tmp_path):
    written = write_folder(tmp_path / "g", ext="bmp", channels=1)
    train, _, provenance = image_folder.IMAGE_FOLDER.load(data_cfg(tmp_path / "g", tmp_path))
    assert train.x.shape == (36, 1, 8, 12) and np.array_equal(train.x, written["train"][0])
    assert len(provenance["mean"]) == 1


def test_jpeg_pixels_are_pillows_decoding(tmp_path):
    write_folder(tmp_path / "j", ext="jpg")
    train, _, _ = image_folder.IMAGE_FOLDER.load(data_cfg(tmp_path / "j", tmp_path))
    with Image.open(tmp_path / "j" / "train" / "bee" / "003.jpg") as image:
        want = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(train.x[COUNTS["train"] + 3].numpy(), want)


def test_build_data_takes_classes_and_statistics_from_the_files(folder, tmp_path):
    root, _ = folder
    splits = build_data(data_cfg(root, tmp_path, val_size=6), timesteps=2)
    assert splits.num_classes == 3 and (len(splits.train), len(splits.val)) == (30, 6)
    assert splits.in_channels == 3 and splits.image_size == (8, 12)
    assert splits.mean == tuple(splits.split["mean"]) and len(splits.std) == 3
    assert splits.augmentation == "crop_flip"


def test_the_cache_is_used_then_rebuilt_when_the_source_changes(folder, tmp_path):
    root, _ = folder
    first = image_folder.IMAGE_FOLDER.load(data_cfg(root, tmp_path))
    [path] = (tmp_path / "cache").glob("*.bin")
    assert first[2]["cache_file"] == str(path)
    victim = root / "test" / "cat" / "002.png"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)  # same size and time: the cache still stands
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = image_folder.IMAGE_FOLDER.load(data_cfg(root, tmp_path))
    assert torch.equal(again[1].x, first[1].x) and again[2] == first[2]
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: decoded again
    with pytest.raises(DataError, match=str(victim)):
        image_folder.IMAGE_FOLDER.load(data_cfg(root, tmp_path))


def test_an_archive_changed_is_decoded_again(folder, tmp_path):
    root, _ = folder
    archive = pack(root, tmp_path / "pics.zip")
    image_folder.IMAGE_FOLDER.load(data_cfg(archive, tmp_path))
    (root / "train" / "ant" / "000.png").write_bytes(b"not a png")
    archive.unlink()
    pack(root, archive)
    with pytest.raises(DataError, match="pics.zip:pics/train/ant/000.png"):
        image_folder.IMAGE_FOLDER.load(data_cfg(archive, tmp_path))


def _damaged(root):
    victim = root / "train" / "bee" / "004.png"
    victim.write_bytes(victim.read_bytes()[:60])
    return str(victim)


def _not_an_image(root):
    (root / "test" / "cat" / "notes.txt").write_text("labels checked by hand\n")
    return str(root / "test" / "cat" / "notes.txt")


def _empty_class(root):
    (root / "train" / "dog").mkdir()
    (root / "test" / "dog").mkdir()
    return "train/dog: an empty class folder"


def _other_classes(root):
    (root / "test" / "cat").rename(root / "test" / "kitten")
    return "only in train: cat; only in test: kitten"


def _mixed_sizes(root):
    Image.fromarray(pixels(0, 99, size=(9, 12))).save(root / "train" / "ant" / "099.png")
    return "train/ant/099.png: 12x9 pixels, but"


def _file_outside_a_class(root):
    (root / "train" / "x.png").write_bytes(b"")
    return "train/x.png: a file outside any class folder"


def _nested_folder(root):
    (root / "train" / "ant" / "more").mkdir()
    return "train/ant/more: a folder inside a class folder"


def _no_test_split(root):
    shutil.rmtree(root / "test")
    return "no test/ folder"


BAD = {"damaged image": _damaged, "not an image": _not_an_image, "empty class": _empty_class,
       "other test classes": _other_classes, "mixed sizes": _mixed_sizes,
       "file outside a class": _file_outside_a_class, "nested folder": _nested_folder,
       "no test split": _no_test_split}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folder_is_one_error_and_caches_nothing(folder, tmp_path, case):
    root, _ = folder
    expected = BAD[case](root)
    with pytest.raises(DataError) as err:
        build_data(data_cfg(root, tmp_path), timesteps=2)
    assert isinstance(err.value, TwinsnnError) and expected in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("case", ["damaged image", "not an image", "empty class",
                                  "other test classes", "mixed sizes"])
def test_bad_archive_on_the_command_line_is_one_line_exit_2(folder, tmp_path, case, capsys):
    root, _ = folder
    expected = BAD[case](root).replace(str(root) + "/", "")
    archive = pack(root, tmp_path / "pics.tar.gz")
    proc = cli(capsys, "train", "--config", "fmnist-cpu", "--set", "data.name=image-folder",
               "--data-dir", archive, "--set", f"data.cache_dir={tmp_path / 'cache'}",
               "--out-dir", tmp_path / "runs", *TINY)
    assert_one_line_error(proc, expected)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    assert not (tmp_path / "runs" / "fmnist-cpu" / "checkpoint.pt").exists()


def test_an_image_not_of_the_data_sets_size_is_named(folder, tmp_path):
    """A named data set of one image size (cifar10-jpeg: 3x32x32) stops at the first image of
    another, before anything is cached."""
    root, _ = folder
    kind = dataclasses.replace(image_folder.CIFAR10_JPEG, names=(), CLASSES=CLASSES,
                               per_class=None)
    with pytest.raises(DataError, match=r"train/ant/000.png: 12x8 pixels, but the data set's "
                                        r"images are 32x32$"):
        kind.load(data_cfg(root, tmp_path))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_damaged_member_is_named_with_its_archive(folder, tmp_path):
    root, _ = folder
    _damaged(root)
    archive = pack(root, tmp_path / "pics.zip")
    with pytest.raises(DataError, match=f"{archive}:pics/train/bee/004.png: not an image"):
        image_folder.IMAGE_FOLDER.load(data_cfg(archive, tmp_path))


def test_hidden_files_and_entries_beside_the_splits_are_not_read(folder, tmp_path):
    root, written = folder
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0\1")
    (root / "README.txt").write_text("my pictures\n")
    (root / "cache").mkdir()
    train, _, _ = image_folder.IMAGE_FOLDER.load(data_cfg(root, tmp_path))
    assert np.array_equal(train.x.numpy(), written["train"][0])


def test_not_found_and_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINSNN_DATA", raising=False)
    with pytest.raises(DataError, match="the image folder not found") as err:
        build_data(data_cfg(tmp_path, tmp_path), timesteps=2)
    assert str(tmp_path) in str(err.value) and "--data-dir" in str(err.value)
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b\x08\0 not really gzip")
    with pytest.raises(DataError, match="SHA-256 is .* expected 7946ab43"):
        build_data(DataConfig(name="cifar10-jpeg", dir=str(tmp_path)), timesteps=2)
    with pytest.raises(DataError, match="not a readable archive"):
        build_data(DataConfig(name="cifar10-jpeg", dir=str(tmp_path), verify=False,
                              cache_dir=str(tmp_path / "c")), timesteps=2)


def test_a_named_data_set_checks_its_classes(tmp_path):
    write_folder(tmp_path / "cifar10-jpeg")
    with pytest.raises(DataError, match="classes ant, bee, cat; CIFAR-10 .JPEG q75 copy. has "
                                        "airplane, automobile"):
        build_data(DataConfig(name="cifar10-jpeg", dir=str(tmp_path),
                              cache_dir=str(tmp_path / "c")), timesteps=2)


def test_datasets_fit_and_predict_through_the_api(folder, tmp_path, monkeypatch):
    root, written = folder
    archive = pack(root, tmp_path / "pics.tar")
    monkeypatch.setenv("TWINSNN_DATA", str(archive))  # a data set given as one file
    train, val, test = twinsnn.datasets("image-folder", val_size=6,
                                        cache_dir=str(tmp_path / "cache"))
    assert (len(train), len(val), len(test)) == (30, 6, 12)
    x, y = test[5]
    assert x.shape == (3, 8, 12) and x.dtype == torch.float32 and int(y) == 1
    run = twinsnn.fit("cifarnet", "image-folder", config="fmnist-cpu", width=0.0625, epochs=1,
                      batch_size=8, val_size=6, timesteps=2, compile=False,
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "runs"),
                      name="pics", progress=False)
    meta = json.loads((run.dir / "run.json").read_text())["data_split"]
    assert meta["classes"] == list(CLASSES) and meta["data_path"] == str(archive)
    image = tmp_path / "bee.png"
    Image.fromarray(pixels(1, 0)).resize((16, 12)).save(image)  # another size: resized
    [row] = twinsnn.classify_images(twinsnn.load(run.dir / "model.safetensors"), [image])
    assert row["name"] == CLASSES[row["class"]]


def test_command_line_train_eval_and_check(folder, tmp_path, capsys):
    root, _ = folder
    archive = pack(root, tmp_path / "pics.zip")
    cache_dir = ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = cli(capsys, "train", "--config", "fmnist-cpu", "--set", "data.name=image-folder",
               "--data-dir", archive, *cache_dir, "--out-dir", tmp_path / "runs", "--name", "p",
               *TINY)
    assert proc.returncode == 0, proc.stderr
    proc = cli(capsys, "eval", tmp_path / "runs" / "p" / "model.safetensors", "--json")
    report = json.loads(proc.stdout)
    assert report["data"] == "image-folder" and report["samples"] == 12
    proc = cli(capsys, "data", "check", "image-folder", "--data-dir", archive)
    assert proc.returncode == 0, proc.stdout
    assert "36 training and 12 test images of 3x8x12" in proc.stdout
    assert "ant 12/4, bee 12/4, cat 12/4" in proc.stdout
    _other_classes(root)
    proc = cli(capsys, "data", "check", "image-folder", "--data-dir", root)
    assert proc.returncode == 2 and "FAILED" in proc.stdout and "kitten" in proc.stdout


def test_the_cache_goes_home_beside_a_read_only_folder(folder, tmp_path, monkeypatch):
    root, _ = folder
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    pack(root, shelf / "pics.tar.gz")
    shelf.chmod(0o555)  # read-only, even for root, who could write there regardless
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    try:
        _, _, provenance = image_folder.IMAGE_FOLDER.load(
            DataConfig(name="image-folder", dir=str(shelf / "pics.tar.gz")))
    finally:
        shelf.chmod(0o755)
    assert provenance["cache_file"].startswith(str(tmp_path / "home" / ".cache" / "twinsnn"))
    assert sorted(p.name for p in shelf.iterdir()) == ["pics.tar.gz"]
    assert cache.read(provenance["cache_file"], json.loads(open(
        provenance["cache_file"], "rb").readline())["key"]) is not None
