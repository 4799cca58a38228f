"""CIFAR-10 and CIFAR10-DVS through the command line, on data generated in the published formats."""
import json

import numpy as np
import pytest

from test_cifar import batch, py2_pickle, write_archive
from test_cli import assert_one_line_error, cli, twinsnn
from test_dvs import make_dataset
from twinsnn.config import load_config
from twinsnn.data import cifar

OFFICIAL_MD5 = cifar.CHECKSUMS["cifar-10-python.tar.gz"]
TINY = ["--set", "width=0.0625", "--set", "train.compile=false", "--set", "epochs=1",
        "--set", "batch_size=16", "--set", "data.verify=false", "--set", "eval_batch_size=200",
        "--quiet"]


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    """A folder holding a full-size ``cifar-10-python.tar.gz`` (5 x 10,000 train rows, 10,000
    test rows) in the official layout but with other content, so not the official MD5."""
    folder = tmp_path_factory.mktemp("cifar10")
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = {name: py2_pickle(batch(10000, rng.integers(0, 10, 10000).tolist(), start=10000 * i))
               for i, name in enumerate(names)}
    write_archive(folder / cifar.CIFAR10.archive, cifar.CIFAR10.folder, members)
    return folder


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cifar10_cpu_run_end_to_end(tmp_path, cifar10_dir, capsys):
    # the test set is fixed at 10,000 images, too many to evaluate in a short test: the run
    # and the evaluation use the validation split (the DVS run covers the test split)
    twinsnn("train", "--config", "cifar10-cpu", "--data-dir", cifar10_dir, *TINY,
            "--set", "val_size=32", "--set", "train_limit=64", "--name", "c10",
            "--out-dir", tmp_path / "runs", cwd=tmp_path, check_rc=0)
    run = tmp_path / "runs" / "c10"
    assert (run / "model.safetensors").is_file()
    [last] = metrics(run)
    split = json.loads((run / "run.json").read_text())["data_split"]
    assert split["train_size"] == 64 and split["data_path"] == str(cifar10_dir /
                                                                   cifar.CIFAR10.archive)
    report = json.loads(cli(capsys, "eval", run / "model.safetensors", "--split", "val",
                            "--json").stdout)
    assert report["data"] == "cifar10" and report["samples"] == 32
    assert report["accuracy"] == last["val_accuracy/0"]


def test_cifar10_wrong_checksum_is_one_line(tmp_path, cifar10_dir, capsys):
    proc = cli(capsys, "train", "--config", "cifar10-cpu", "--data-dir", cifar10_dir,
               "--out-dir", tmp_path / "runs")
    assert_one_line_error(proc, str(cifar10_dir / cifar.CIFAR10.archive), OFFICIAL_MD5)
    assert not (tmp_path / "runs" / "cifar10-cpu" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_data_check_reports_the_mismatch(tmp_path, cifar10_dir, capsys):
    proc = cli(capsys, "data", "check", "cifar10", "--data-dir", cifar10_dir)
    assert proc.returncode == 2
    assert f"found archive {cifar10_dir / cifar.CIFAR10.archive}" in proc.stdout
    assert "FAILED" in proc.stdout and "MD5 is" in proc.stdout and OFFICIAL_MD5 in proc.stdout
    proc = twinsnn("data", "check", "cifar100", "--data-dir", tmp_path / "none", cwd=tmp_path,
                   check_rc=2)  # the exit status of a real process
    assert f"{tmp_path / 'none'} (missing)" in proc.stdout
    assert "cifar-100-python.tar.gz" in proc.stdout


@pytest.mark.slow
def test_cifar10_dvs_cpu_run_end_to_end(tmp_path, capsys):
    root = make_dataset(tmp_path / "data" / "CIFAR10-DVS")  # 10 recordings per class
    data_dir = tmp_path / "data"
    twinsnn("train", "--config", "cifar10dvs-cpu", "--data-dir", data_dir, *TINY,
            "--set", "val_size=10", "--set", "train.eval_test=true", "--name", "dvs", "--out-dir", tmp_path / "runs",
            cwd=tmp_path, check_rc=0)
    run = tmp_path / "runs" / "dvs"
    assert (run / "model.safetensors").is_file()
    [last] = metrics(run)
    split = json.loads((run / "run.json").read_text())["data_split"]
    assert split["split"] == "random-per-class-9:1" and split["split_seed"] == 0
    assert split["resolution"] == 32 and split["train_size"] == 80
    assert [str(p) for p in (root / "cache").glob("*.bin")] == [split["cache_file"]]
    report = json.loads(cli(capsys, "eval", run / "model.safetensors", "--json").stdout)
    assert report["data"] == "cifar10-dvs" and report["samples"] == 10
    assert report["accuracy"] == last["test_accuracy/0"]
    check = cli(capsys, "data", "check", "cifar10-dvs", "--data-dir", data_dir)
    assert check.returncode == 0
    out = check.stdout
    assert f"found {root}" in out and "100 of 100 recordings are valid AEDAT 2.0" in out


PAPER = {"width": 1.0, "timesteps": 5, "batch_size": 256, "lr": 0.01, "lr_gamma": 0.928,
         "lr_step_size": 1, "lr_step_unit": "epoch", "epochs": 250}
CPU = {"width": 0.125, "timesteps": 5, "batch_size": 64, "lr": 0.002, "lr_gamma": 0.928,
       "lr_step_size": 100, "lr_step_unit": "batch"}  # as fmnist-cpu
CIFAR10_JPEG_CPU = {**CPU, "timesteps": 2, "epochs": 3}


@pytest.mark.parametrize("name,data,dropout,scale,alpha", [
    ("cifar10-paper", "cifar10", 0.2, PAPER, None),
    ("cifar10-paper-tna", "cifar10", 0.2, PAPER, 1e-3),
    ("cifar100-paper", "cifar100", 0.2, PAPER, None),
    ("cifar100-paper-tna", "cifar100", 0.2, PAPER, 1e-3),
    ("cifar10dvs-paper", "cifar10-dvs", 0.5, PAPER, None),
    ("cifar10dvs-paper-tna", "cifar10-dvs", 0.5, PAPER, 1e-4),
    ("cifar10-cpu", "cifar10", 0.2, CPU, None),
    ("cifar100-cpu", "cifar100", 0.2, CPU, None),
    ("cifar10dvs-cpu", "cifar10-dvs", 0.5, CPU, None),
    ("cifar10-jpeg-paper", "cifar10-jpeg", 0.2, PAPER, None),
    ("cifar10-jpeg-paper-tna", "cifar10-jpeg", 0.2, PAPER, 1e-3),
    ("cifar10-jpeg-cpu", "cifar10-jpeg", 0.2, CIFAR10_JPEG_CPU, None),
])
def test_presets(name, data, dropout, scale, alpha):
    cfg = load_config(name)
    assert cfg.name == name and cfg.data.name == data and cfg.data.verify
    assert cfg.model.dropout == dropout
    values = {**vars(cfg.model), **vars(cfg.train)}
    assert {k: values[k] for k in scale} == scale
    if alpha is None:
        assert cfg.loss.strategy == "single"
    else:
        assert (cfg.loss.strategy, cfg.loss.members, cfg.loss.alpha) == ("tna", 2, alpha)
    if data == "cifar10-dvs":
        assert cfg.data.resolution == (48 if "paper" in name else 32)
    assert cfg.data.augment == (name != "cifar10-jpeg-cpu")


@pytest.mark.parametrize("arm,strategy,mode", [("cpu-tna", "tna", "none"),
                                               ("cpu-tsnn", "single", "ternary"),
                                               ("cpu-tna-tsnn", "tna", "ternary"),
                                               ("paper-tna-tsnn", "tna", "ternary")])
def test_cifar10_jpeg_arms_change_only_their_own_settings(arm, strategy, mode):
    base = load_config("cifar10-jpeg-paper" if "paper" in arm else "cifar10-jpeg-cpu")
    cfg = load_config(f"cifar10-jpeg-{arm}")
    assert (cfg.data, cfg.model, cfg.train) == (base.data, base.model, base.train)
    assert (cfg.loss.strategy, cfg.quant.mode) == (strategy, mode)
    if mode != "none":
        assert cfg.quant.start_epoch == (150 if "paper" in arm else 2)
