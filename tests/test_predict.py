"""``twinsnn predict`` on image files, and the networks that ship with twinsnn. Every shipped
network, and a small CIFAR-10 network that the tests train and ship into a folder of their own
with ``docs/runs/cifar10/ship.py``: files of real test images as a user has them (PNGs cut from
Fashion-MNIST's test set; the CIFAR-10 JPEG copy's own files) get the classes that the
evaluation path gives those images, enlarged copies are resized back and mostly keep their
class (the pixels a network sees: within a few levels of the original's; its classes: for a
shipped network), and ``eval`` reproduces the network's recorded test accuracy. A network's tests skip
without its data (real Fashion-MNIST installed; the CIFAR-10 copy given by
``--real-data=DIR``)."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import twinsnn
from conftest import NO_FMNIST
from test_cifar10_jpeg import real_entries
from test_cli import assert_one_line_error, cli
from twinsnn.classify import pretrained, pretrained_names, pretrained_record, read_image
from twinsnn.cli import main
from twinsnn.config import DataConfig
from twinsnn.data import dataset_module, fashion_mnist, image_folder
from twinsnn.data.transforms import Preprocess
from twinsnn.losses import logits_of
from twinsnn.sweep import final_test

SHIPPED = pretrained_names()
SHIP = Path(__file__).parents[1] / "docs" / "runs" / "cifar10" / "ship.py"
SMALL = "cifar10-jpeg-small"  # trained and shipped into a folder of the tests' own
PER_CLASS = 4  # test images per class given to predict


@dataclass
class Network:
    """A network under test: the arguments that name it to ``predict`` and ``eval``
    (``--pretrained NAME``, or its file), its file, its record (as ``ship.py`` writes it) and
    the arguments that find its data set."""
    names_it: list
    file: Path
    record: dict
    data_args: list

    @property
    def shipped(self) -> bool:
        return self.names_it[0] == "--pretrained"


def data_args(data: str, request, monkeypatch) -> list:
    """The command-line arguments that find the data set ``data`` (for the CIFAR-10 copy with
    its decoded cache in ``HOME``); skips the test without the data."""
    if data == "fashion-mnist":
        if fashion_mnist.locate(None) is None:
            pytest.skip(NO_FMNIST)
        return []
    assert data == "cifar10-jpeg", f"no test images known for {data}"
    source = request.getfixturevalue("cifar10_jpeg")
    monkeypatch.setenv("HOME", str(request.getfixturevalue("cifar10_jpeg_home")))
    return ["--data-dir", source]


def ship(run: Path, packed: Path, into: Path, home: Path, data_dir: Path):
    """``ship.py`` as its user runs it: ``packed`` (of ``run``) as ``SMALL`` into ``into``."""
    return subprocess.run([sys.executable, SHIP, SMALL, run, packed, "--into", into,
                           "--description", "a small CIFAR-10 TNA T-SNN", "--command", "tests",
                           "--data-dir", data_dir], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def small_cifar10(cifar10_jpeg, cifar10_jpeg_home, tmp_path_factory) -> Path:
    """A small T-SNN trained on 2,000 training images of the CIFAR-10 copy (ternary in the
    second of two epochs), scored once on the test split (``test.json``), packed, and shipped
    with ``ship.py`` into a folder of its own: that folder."""
    root = tmp_path_factory.mktemp("small-cifar10")
    run = twinsnn.fit("cifarnet", "cifar10-jpeg", dir=str(cifar10_jpeg), train_size=2000,
                      val_size=500, cache_dir=str(cifar10_jpeg_home / ".cache" / "twinsnn"),
                      width=0.0625, timesteps=2, epochs=2, batch_size=50, lr=0.005,
                      lr_step_unit="epoch", strategy="single", mode="ternary",
                      start_epoch=1, delta_rule="mean_abs", delta=0.5, compile=False,
                      out_dir=str(root), name="run", progress=False)
    final_test(run.dir)
    assert main(["export", str(run.dir / "checkpoint.pt"), "-o", str(root / "small.tnn")]) == 0
    shipped = root / "shipped"
    shipped.mkdir()
    proc = ship(run.dir, root / "small.tnn", shipped, cifar10_jpeg_home, cifar10_jpeg)
    assert proc.returncode == 0, proc.stderr
    return shipped


@pytest.fixture(params=[*SHIPPED, pytest.param(SMALL, marks=pytest.mark.slow)])
def network(request, monkeypatch) -> Network:
    if request.param == SMALL:
        file = request.getfixturevalue("small_cifar10") / f"{SMALL}.tnn"
        names_it = [file]
    else:
        file, names_it = pretrained(request.param), ["--pretrained", request.param]
    record = json.loads(file.with_suffix(".json").read_text())
    data = twinsnn.load(file).meta["data"]["name"]
    return Network(names_it, file, record, data_args(data, request, monkeypatch))


def real_test_images(network: Network, folder: Path):
    """``(files, x, y)``: the first ``PER_CLASS`` real test images of every class of the
    network's data set as files in ``folder``, as the data set reads them (uint8 ``[N, C, H,
    W]``) and their labels."""
    files, images, labels = [], [], []
    if not network.data_args:
        _, test, _ = fashion_mnist.load(DataConfig())
        for label in range(10):
            for i in torch.nonzero(test.y == label)[:PER_CLASS, 0].tolist():
                files.append(folder / f"test{i}.png")
                Image.fromarray(test.x[i, 0].numpy(), mode="L").save(files[-1])
                images.append(test.x[i])
                labels.append(label)
        return files, torch.stack(images), labels
    classes = image_folder.CIFAR10_JPEG.CLASSES
    for split, cls, file, raw in sorted(real_entries(network.data_args[1])):
        if split == "test" and int(Path(file).stem) < PER_CLASS:
            files.append(folder / f"{cls}-{file}")
            files[-1].write_bytes(raw)  # the copy's own JPEG file
            images.append((str(files[-1]), raw))
            labels.append(classes.index(cls))
    return files, torch.from_numpy(image_folder.decode(images)), labels


def test_every_shipped_network_has_its_record():
    assert "fmnist-tna-tsnn" in SHIPPED
    for name in SHIPPED:
        record = pretrained_record(name)
        assert record["name"] == name and pretrained(name).stat().st_size == record["bytes"]
        assert 0.1 < record["test_accuracy"] <= 1 and record["test_accuracy_checked_on"]


def test_predict_gives_the_classes_the_evaluation_path_gives(network, tmp_path, capsys):
    files, x, y = real_test_images(network, tmp_path)
    proc = cli(capsys, "predict", *network.names_it, *files, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    model = twinsnn.load(network.file)
    meta = model.meta  # the file's description, which the network carries
    stats = type("Stats", (), {"mean": meta["data"]["mean"], "std": meta["data"]["std"],
                               "augmentation": "crop_flip"})
    with torch.no_grad():
        want = logits_of(model.eval()(Preprocess(stats, False)(x))).argmax(1).tolist()
    assert [r["class"] for r in rows] == want
    classes = dataset_module(meta["data"]["name"]).CLASSES
    assert all(r["name"] == classes[r["class"]] and 0 < r["probability"] <= 1 for r in rows)
    if network.shipped:  # trained to be used (the small CIFAR-10 network is not)
        assert np.mean(np.array(want) == np.array(y)) > 0.5, (want, y)  # chance: 0.1
    # any size and format: RGB JPEGs enlarged 4x by 3x (wider than high) are resized back
    big = []
    for path in files:
        with Image.open(path) as image:
            big.append(tmp_path / f"big-{path.stem}.jpg")
            w, h = image.size
            image.convert("RGB").resize((4 * w, 3 * h), Image.Resampling.BICUBIC).save(
                big[-1], quality=95)
    channels, size = meta["model"]["in_channels"], meta["model"]["image_size"]
    seen = torch.stack([read_image(path, channels, size, [0.0] * channels, [1.0] * channels)
                        for path in big])
    assert seen.shape == x.shape and (seen - x / 255).abs().mean() < 0.04  # 10 of 255 levels
    proc = cli(capsys, "predict", *network.names_it, *big, "--json")
    assert proc.returncode == 0, proc.stderr
    if network.shipped:
        kept = np.mean([r["class"] == c for r, c in zip(json.loads(proc.stdout), want)])
        assert kept >= 0.75, kept


def test_damaged_or_non_image_files_are_one_line_and_exit_2(tmp_path, capsys):
    name = SHIPPED[0]
    good = tmp_path / "good.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8), mode="L").save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    for bad in (cut, text, tmp_path / "missing.png"):
        assert_one_line_error(cli(capsys, "predict", "--pretrained", name, bad), str(bad))
    assert_one_line_error(cli(capsys, "predict", "--pretrained", "fmnist-tna", good),
                          "did you mean fmnist-tna-tsnn?")


@pytest.mark.slow
def test_eval_reproduces_the_recorded_test_accuracy(network, capsys):
    """Exactly on a kind of CPU it was checked on; elsewhere other rounding may move a few
    of the 10,000 predictions."""
    from test_reproducibility import platform_key
    proc = cli(capsys, "eval", *network.names_it, *network.data_args, "--json")
    assert proc.returncode == 0, proc.stderr
    report, record = json.loads(proc.stdout), network.record
    assert report["samples"] == 10000
    if platform_key().rsplit(" | torch", 1)[0] in record["test_accuracy_checked_on"]:
        assert report["accuracy"] == record["test_accuracy"]
    else:
        assert abs(report["accuracy"] - record["test_accuracy"]) <= 0.001


@pytest.mark.slow
def test_ship_writes_nothing_for_a_file_that_does_not_score_the_runs_accuracy(
        small_cifar10, cifar10_jpeg, cifar10_jpeg_home, tmp_path):
    run = small_cifar10.parent / "run"
    record = json.loads((small_cifar10 / f"{SMALL}.json").read_text())
    assert record["test_accuracy"] == json.loads((run / "test.json").read_text())["accuracy"]
    assert record["config"]["quant"]["mode"] == "ternary" and record["run"] == "run"
    assert record["test_accuracy_checked_on"] and record["bytes"] == (
        small_cifar10 / f"{SMALL}.tnn").stat().st_size
    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("*.pt", "*.safetensors"))
    scored = json.loads((other / "test.json").read_text())
    (other / "test.json").write_text(json.dumps({**scored, "accuracy": scored["accuracy"] + 0.01}))
    proc = ship(other, small_cifar10 / f"{SMALL}.tnn", tmp_path / "shipped", cifar10_jpeg_home,
                cifar10_jpeg)
    assert proc.returncode != 0 and "nothing written" in proc.stderr, proc.stderr
    assert not (tmp_path / "shipped").exists()
