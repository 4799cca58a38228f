"""``twinsnn predict`` on image files, and the network that ships with twinsnn: PNGs cut
from the real Fashion-MNIST test set get the classes that the evaluation path gives them,
and ``eval --pretrained`` reproduces the shipped network's recorded accuracy."""
import json

import pytest
import torch
from PIL import Image

import twinsnn

from test_cli import assert_one_line_error, cli
from twinsnn.cli import main
from twinsnn.config import DataConfig
from twinsnn.data import fashion_mnist
from twinsnn.data.transforms import Preprocess
from twinsnn.losses import logits_of
from twinsnn.classify import pretrained, pretrained_names, pretrained_record

pytestmark = pytest.mark.skipif(fashion_mnist.locate(None) is None,
                                reason="real Fashion-MNIST not installed")
NAME = "fmnist-tna-tsnn"


def test_fmnist_tna_tsnn_ships():
    assert NAME in pretrained_names()
    record = pretrained_record(NAME)
    assert pretrained(NAME).stat().st_size == record["bytes"]


def cut_pngs(folder, n=40):
    """The first ``n`` real test images as 28x28 grayscale PNG files, and the images."""
    _, test, _ = fashion_mnist.load(DataConfig())
    paths = []
    for i in range(n):
        paths.append(folder / f"test{i}.png")
        Image.fromarray(test.x[i, 0].numpy(), mode="L").save(paths[-1])
    return paths, test.x[:n]


def test_predict_gives_the_classes_the_evaluation_path_gives(tmp_path, capsys):
    paths, x = cut_pngs(tmp_path)
    proc = cli(capsys, "predict", "--pretrained", NAME, *paths, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    model = twinsnn.load(pretrained(NAME))
    meta = model.meta  # the file's description, which the network carries
    stats = type("Stats", (), {"mean": meta["data"]["mean"], "std": meta["data"]["std"],
                               "augmentation": "crop_flip"})
    with torch.no_grad():
        want = logits_of(model.eval()(Preprocess(stats, False)(x))).argmax(1)
    assert [r["class"] for r in rows] == want.tolist()
    assert all(r["name"] == fashion_mnist.CLASSES[r["class"]] and 0 < r["probability"] <= 1
               for r in rows)
    # any size and format: a larger RGB JPEG is converted and classified too
    Image.open(paths[0]).convert("RGB").resize((100, 80)).save(tmp_path / "big.jpg")
    proc = cli(capsys, "predict", "--pretrained", NAME, tmp_path / "big.jpg")
    assert proc.returncode == 0 and proc.stdout.startswith(str(tmp_path / "big.jpg") + ": ")


def test_damaged_or_non_image_files_are_one_line_and_exit_2(tmp_path, capsys):
    paths, _ = cut_pngs(tmp_path, 1)
    cut = tmp_path / "cut.png"
    cut.write_bytes(paths[0].read_bytes()[:40])
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    for bad in (cut, text, tmp_path / "missing.png"):
        assert_one_line_error(cli(capsys, "predict", "--pretrained", NAME, bad), str(bad))
    assert_one_line_error(cli(capsys, "predict", "--pretrained", "fmnist-tna", paths[0]),
                          "did you mean fmnist-tna-tsnn?")


def test_eval_of_the_shipped_network_reproduces_its_record(capsys):
    """Exactly on a kind of CPU it was checked on; elsewhere other rounding may move a few
    of the 10,000 predictions."""
    from test_reproducibility import platform_key
    proc = cli(capsys, "eval", "--pretrained", NAME, "--json")
    assert proc.returncode == 0, proc.stderr
    record, accuracy = pretrained_record(NAME), json.loads(proc.stdout)["accuracy"]
    if platform_key().rsplit(" | torch", 1)[0] in record["test_accuracy_checked_on"]:
        assert accuracy == record["test_accuracy"]
    else:
        assert abs(accuracy - record["test_accuracy"]) <= 0.001
