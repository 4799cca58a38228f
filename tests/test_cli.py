"""The command line as a user runs it: a subprocess where the process itself matters (start-up,
signals, exit status), ``twinsnn.cli.main`` in this process where it does not."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import twinsnn as twinsnn_pkg
from twinsnn import __version__
from twinsnn.cli import main

TINY = ["--set", "width=0.0625", "--set", "train.compile=false", "--set", "batch_size=32", "--set", "val_size=40",
        "--set", "data.verify=false", "--set", "eval_batch_size=100", "--set", "train.lr=0.005"]


def twinsnn(*args, cwd, env=None, timeout=300, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "twinsnn", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr[-3000:]
    return proc


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """``twinsnn ARGS`` run in this process: its exit status, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twinsnn: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.slow
def test_help_explains_the_commands(tmp_path):
    out = twinsnn("--help", cwd=tmp_path, check_rc=0).stdout
    for word in ("train", "eval", "predict", "data", "export", "sweep", "plot", "config show",
                 "twin network augmentation"):
        assert word in out
    assert twinsnn("--version", cwd=tmp_path, check_rc=0).stdout == f"twinsnn {__version__}\n"


def _parsers(parser, prefix="twinsnn"):
    """``(name, parser)`` of every (sub)command."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            yield f"{prefix} {name}", sub
            yield from _parsers(sub, f"{prefix} {name}")


def test_every_command_and_flag_explains_itself():
    from twinsnn.cli import build_parser
    commands = dict(_parsers(build_parser()))
    assert {"twinsnn train", "twinsnn predict", "twinsnn data check", "twinsnn config show"} \
        <= set(commands)
    for name, parser in commands.items():
        assert parser.description and "examples:\n  twinsnn" in parser.epilog, name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_suggestions_descriptions_and_meanings(tmp_path, capsys):
    assert_one_line_error(cli(capsys, "trian"), "did you mean train?")
    assert_one_line_error(cli(capsys, "train", "--set", "alhpa=1"), "did you mean alpha?")
    assert_one_line_error(cli(capsys, "train", "--config", "fmnist-cpu-tnaa"),
                          "did you mean fmnist-cpu-tna?")
    for group, action in (("data", "check"), ("config", "show")):
        proc = cli(capsys, group)
        assert proc.returncode == 2 and f"twinsnn {group} {action}" in proc.stdout
    presets = cli(capsys, "presets").stdout.splitlines()
    from twinsnn.config import leaf_keys, preset_names
    assert len(presets) == len(preset_names())
    assert all(len(line.split(None, 1)) == 2 for line in presets)
    explained = cli(capsys, "config", "show", "--explain").stdout.splitlines()
    assert len(explained) == len(leaf_keys())
    assert all(line.split("#", 1)[1].strip() for line in explained)
    assert any(line.startswith("loss.alpha = 0.0001") and "eq. 5" in line for line in explained)


HOSTILE = ["-1", "0", "1e308", "-1e-308", "nan", "inf", "''", "[1, 2]", "{a: 1}", "true",
           "99999999999999999999999", "x" * 300, "~", "!!python/object:os.system 'ls'"]


@pytest.mark.slow
def test_no_value_of_any_key_is_a_traceback(capsys):
    from twinsnn.config import leaf_keys
    for key in leaf_keys():
        for value in HOSTILE:
            proc = cli(capsys, "config", "show", "--set", f"{key}={value}")
            assert proc.returncode in (0, 2), (key, value)
            if proc.returncode:
                assert len(proc.stderr.strip().splitlines()) == 1, (key, value)


@pytest.mark.parametrize("key,value,fragment", [
    ("data.val_size", 100000, "data.val_size must be in [0, 200)"),
    ("data.train_size", 100000, "data.train_size must be in"),
    ("model.width", 100000, "out of memory"),
])
def test_values_too_large_for_the_data_or_the_machine_are_one_line(tmp_path, tiny_fmnist,
                                                                   capsys, key, value,
                                                                   fragment):
    proc = cli(capsys, "train", "--data-dir", tiny_fmnist, *TINY, "--set", f"{key}={value}",
               "--out-dir", tmp_path, "--quiet")
    assert_one_line_error(proc, fragment)


def test_config_show_prints_every_key_resolved(tmp_path, capsys):
    import yaml

    from twinsnn.config import leaf_keys
    proc = cli(capsys, "config", "show", "--config", "fmnist-cpu-tna", "--set", "surrogate=atan",
               "--seed", "3")
    assert proc.returncode == 0
    shown = yaml.safe_load(proc.stdout)
    flat = {f"{section}.{k}": v for section, values in shown.items()
            if isinstance(values, dict) for k, v in values.items()}
    assert set(flat) | {k for k in shown if not isinstance(shown[k], dict)} == set(leaf_keys())
    assert flat["model.surrogate"] == "atan" and flat["train.seed"] == 3
    assert flat["loss.strategy"] == "tna" and flat["model.neuron"] == "lif"
    path = tmp_path / "shown.yaml"
    path.write_text(proc.stdout)  # what it prints is a config file that loads as the same
    again = cli(capsys, "config", "show", "--config", path)
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert_one_line_error(cli(capsys, "config", "show", "--set", "surrogate=nope"),
                          "model.surrogate must be one of boxcar, atan, sigmoid")


@pytest.mark.parametrize("args,fragments", [
    (["train", "--config", "nope"], ["no preset or YAML file 'nope'", "fmnist-cpu"]),
    (["train", "--set", "colour=red"], ["unknown config key 'colour'"]),
    (["train", "--set", "train.lr=0"], ["train.lr must be positive"]),
    (["train", "--set", "batch_size=-4"], ["train.batch_size must be positive"]),
    (["eval", "missing.safetensors"], ["missing.safetensors", "no such model file"]),
    (["train", "--branch-from", "missing.pt"], ["missing.pt", "no such checkpoint"]),
    (["train", "--branch-from", "a.pt", "--resume"], ["pass only one"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli(capsys, *args), *fragments)


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
    # `twinsnn presets | head -0`: the pipe's reading end closed before a byte is read
    read, write = os.pipe()
    os.close(read)
    console_script = Path(sys.executable).with_name("twinsnn")  # the installed entry point
    for command in ([sys.executable, "-m", "twinsnn"], [console_script]):
        proc = subprocess.run([*command, "presets"], cwd=tmp_path, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
        assert (proc.returncode, proc.stderr) == (1, ""), command
    os.close(write)


@pytest.mark.slow
def test_a_bad_value_through_a_real_process_is_one_line(tmp_path):
    assert_one_line_error(twinsnn("train", "--set", "train.lr=0", cwd=tmp_path),
                          "train.lr must be positive")


def test_missing_data_says_where_and_how(tmp_path, capsys):
    proc = cli(capsys, "train", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path / "runs")
    assert_one_line_error(proc, "Fashion-MNIST not found", str(tmp_path / "empty"), "apt-get install")


def test_corrupt_idx_names_the_file(tmp_path, tiny_fmnist, capsys):
    victim = tiny_fmnist / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:300])
    proc = cli(capsys, "train", "--data-dir", tiny_fmnist, *TINY, "--out-dir", tmp_path / "runs")
    assert_one_line_error(proc, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "runs" / "fmnist-cpu" / "checkpoint.pt").exists()


def test_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(os.urandom(1000))
    assert_one_line_error(cli(capsys, "eval", bad), "checkpoint.pt", "not a readable")
    bad_model = tmp_path / "model.safetensors"
    bad_model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_one_line_error(cli(capsys, "eval", bad_model), "model.safetensors")


@pytest.mark.slow
def test_train_then_eval_end_to_end(tmp_path, tiny_fmnist, capsys):
    runs = tmp_path / "runs"
    twinsnn("train", "--data-dir", tiny_fmnist, *TINY, "--set", "epochs=2", "--name", "smoke",
            "--out-dir", runs, "--quiet", cwd=tmp_path, check_rc=0)
    run = runs / "smoke"
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert {"train_loss", "val_accuracy/0", "lr", "epoch_time_s", "firing_rates"} <= set(metrics[0])
    assert set(metrics[0]["firing_rates"]) == {f"convs.{i}" for i in range(5)} | {"fcs.0", "fcs.1"}
    info = json.loads((run / "run.json").read_text())
    assert info["torch_version"] == torch.__version__ and info["member_seeds"] == [0]
    assert info["data_split"]["val_size"] == 40
    assert info["machine"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").exists():  # timings name the CPU they were taken on
        assert info["machine"]["cpu"] in Path("/proc/cpuinfo").read_text()
        assert info["machine"]["family"] and info["machine"]["model"]
    head = subprocess.run(["git", "-C", str(Path(twinsnn_pkg.__file__).parent), "rev-parse",
                           "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a git checkout: the run names its commit
        assert info["code"]["commit"] == head.stdout.strip()
        assert isinstance(info["code"]["dirty"], bool)
    else:
        assert info["code"] == {"commit": None, "dirty": None}
    out = cli(capsys, "eval", run / "model.safetensors", "--data-dir", tiny_fmnist, "--json")
    report = json.loads(out.stdout)
    assert report["samples"] == 60 and 0.0 <= report["accuracy"] <= 1.0
    assert sum(map(sum, report["confusion"])) == 60
    # evaluating the checkpoint's base member gives the same numbers as the saved model
    ck = json.loads(cli(capsys, "eval", run / "checkpoint.pt", "--data-dir", tiny_fmnist,
                        "--json").stdout)
    assert ck["confusion"] == report["confusion"]
    # the run folder is not overwritten by accident
    again = cli(capsys, "train", "--data-dir", tiny_fmnist, *TINY, "--name", "smoke",
                "--out-dir", runs, "--quiet")
    assert_one_line_error(again, "--resume")


def _final_weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path, tiny_fmnist):
    """Killed three times at seeded random moments (start-up, a step, evaluation or a
    checkpoint write), resumed each time: the end result equals the uninterrupted run."""
    args = ["--data-dir", tiny_fmnist, *TINY, "--set", "epochs=3", "--set", "batch_size=8",
            "--out-dir", tmp_path / "runs", "--quiet"]
    twinsnn("train", *args, "--name", "straight", cwd=tmp_path, check_rc=0)
    run = tmp_path / "runs" / "killed"
    rng = random.Random(0)
    for _ in range(3):
        resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
        proc = subprocess.Popen([sys.executable, "-m", "twinsnn", "train", *map(str, args),
                                 "--name", "killed", *resume], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(rng.uniform(1.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
    twinsnn("train", *args, "--name", "killed", *resume, cwd=tmp_path, check_rc=0)
    a, b = _final_weights(tmp_path / "runs" / "straight"), _final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1, 2]
