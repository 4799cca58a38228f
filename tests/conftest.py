"""Fixtures shared by the tests, the ``fmnist`` marker's skip and the summary that names the
tests skipped for want of real data.

Markers (pyproject.toml): ``slow`` (seconds to minutes on a 2-core CPU; the inner loop is
``pytest -m "not slow"``), ``fmnist`` (reads the real Fashion-MNIST: skipped where it is not
installed, and then listed at the end of the run with how to get it), ``timeout(s)``
(pytest-timeout; the default is in pyproject.toml). The tests of the real CIFAR-10 JPEG copy
(the ``cifar10_jpeg`` fixture) are listed alike when it is not given.
"""
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from twinsnn.config import DataConfig
from twinsnn.data import build_data, fashion_mnist, image_folder


def pytest_addoption(parser):
    parser.addoption("--real-data", metavar="DIR",
                     help="a folder holding real data sets that tests read where given (--real-data=DIR): "
                          "cifar10-jpeg.tar.gz (default: $TWINSNN_DATA)")


@pytest.fixture(scope="session")
def cifar10_jpeg(request) -> Path:
    """The real CIFAR-10 JPEG copy (its archive, or its extracted folder) in ``--real-data``
    or ``$TWINSNN_DATA``; the test is skipped without it."""
    folder = request.config.getoption("--real-data") or os.environ.get("TWINSNN_DATA")
    source = image_folder.CIFAR10_JPEG.locate(Path(folder).resolve()) if folder else None
    if source is None:
        pytest.skip(NO_CIFAR10_JPEG)
    return source


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this test session that every xdist worker sees under the same path."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' folders share this session's parent
        root = root.parent
    return root / name


NO_FMNIST = "the real Fashion-MNIST is not installed"
NO_CIFAR10_JPEG = "the CIFAR-10 JPEG copy was not given"
HOW_TO_GET = {NO_FMNIST: fashion_mnist.HOW_TO_GET,  # the real data the tests may skip without
              NO_CIFAR10_JPEG: "pytest --real-data=DIR, DIR holding cifar10-jpeg.tar.gz (as "
                               ".ci/run does), or $TWINSNN_DATA"}


@pytest.fixture(scope="session")
def cifar10_jpeg_home(cifar10_jpeg, tmp_path_factory):
    """A home folder whose ``~/.cache/twinsnn`` holds the decoded real copy, decoded once per
    session for all workers: set ``HOME`` to it, and the commands read the cache."""
    from filelock import FileLock

    home = shared_folder(tmp_path_factory, "cifar10-jpeg-home")
    with FileLock(str(home) + ".lock"):
        build_data(DataConfig(name="cifar10-jpeg", dir=str(cifar10_jpeg), val_size=0,
                              cache_dir=str(home / ".cache" / "twinsnn")), 2)
    return home


def slow_when_compiled(kernels) -> list:
    """LIF kernel names as test parameters, ``compiled`` marked slow (torch.compile's first
    kernel in a process takes seconds)."""
    return [pytest.param(k, marks=pytest.mark.slow) if k == "compiled" else k for k in kernels]


def pytest_collection_modifyitems(config, items):
    """Skip the tests that read the real Fashion-MNIST (marked ``fmnist``, or using the
    ``trained_runs`` fixture) where it is not installed."""
    if fashion_mnist.locate(None) is not None:
        return
    skip = pytest.mark.skip(reason=NO_FMNIST)
    for item in items:
        if "fmnist" in item.keywords or "trained_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Name every test that did not run for want of real data, loudly, and how to get it."""
    skipped = terminalreporter.stats.get("skipped", [])
    for reason, how in HOW_TO_GET.items():
        missed = sorted(r.nodeid for r in skipped if reason in str(r.longrepr))
        if not missed:
            continue
        terminalreporter.section(f"{len(missed)} tests NOT RUN: {reason}", sep="!", red=True,
                                 bold=True)
        for nodeid in missed:
            terminalreporter.write_line(f"  {nodeid}")
        terminalreporter.write_line(f"to run them: {how}", red=True, bold=True)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file exactly as the (Fashion-)MNIST distribution has it, gzip-compressed."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path) -> Path:
    """A Fashion-MNIST-format folder: 200 train and 60 test images of two learnable classes."""
    return write_tiny_fmnist(tmp_path)


def write_tiny_fmnist(parent: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = parent / "fmnist"
    folder.mkdir()
    for split, n in (("train", 200), ("test", 60)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        images[:, :14] += (labels[:, None, None] * 19).astype(np.uint8)  # class-dependent band
        prefix = "t10k" if split == "test" else "train"
        write_idx_gz(folder / fashion_mnist.FILES[f"{split}_images"][0], images)
        write_idx_gz(folder / fashion_mnist.FILES[f"{split}_labels"][0], labels)
        assert fashion_mnist.FILES[f"{split}_images"][0].startswith(prefix)
    return folder


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Tiny tensors: one thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spread_net():
    """``make(mode="ternary", scale="none")``: a small CIFARNet in eval mode whose weights
    straddle the ternary threshold and whose BatchNorms have spread statistics, negative and
    zero scales among them; compressed (``mode``) but for the first conv and the output."""
    from torch import nn

    from twinsnn.config import ModelConfig
    from twinsnn.models import cifarnet
    from twinsnn.quant import compress

    def make(mode="ternary", scale="none", fc_norm="batchnorm"):
        torch.manual_seed(0)
        model = cifarnet(ModelConfig(width=0.125, fc_norm=fc_norm), 10, 1, (28, 28))
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.weight.normal_(0.0, 0.15)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.running_mean.uniform_(-1.0, 1.0)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(-0.5, 2.0)
                    module.weight[0] = 0.0
                    module.bias.uniform_(-0.5, 0.5)
        if mode != "none":
            compress(model, mode, 0.1, scale=scale)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict:
    """Two really trained CPU-scale runs on the real Fashion-MNIST (skipped without it), made
    once per test session and shared by the xdist workers: ``fp``, the fmnist-cpu preset at
    width 0.0625 on 2,000 training images for one epoch; ``ternary``, branched from it for one
    more epoch with ternary weights (fmnist-cpu-tsnn, threshold 0.7 mean |W|).
    Returns ``{"fp": run folder, "ternary": run folder}``."""
    from filelock import FileLock

    from twinsnn.config import load_config
    from twinsnn.api import fit

    out = shared_folder(tmp_path_factory, "trained")
    runs = {"fp": out / "fp", "ternary": out / "ternary"}
    with FileLock(str(out.parent / "trained.lock")):
        if not (runs["ternary"] / "model.safetensors").exists():
            common = [f"out_dir={out}", "model.width=0.0625", "data.train_limit=2000",
                      "data.val_size=500", "train.compile=false"]
            fit(config=load_config("fmnist-cpu", common + ["name=fp", "train.epochs=1"]),
                progress=False)
            fit(config=load_config("fmnist-cpu-tsnn", common + [
                "name=ternary", "train.epochs=2", "quant.start_epoch=1", "quant.delta=0.7",
                "quant.delta_rule=mean_abs"]), progress=False,
                branch_from=runs["fp"] / "checkpoint.pt")
    return runs
