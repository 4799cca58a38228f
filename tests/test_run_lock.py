"""One writer per run folder, and ``fit`` as a library call from any thread."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from test_cli import TINY, assert_one_line_error, twinsnn
from test_reproducibility import tiny
from twinsnn.checkpoint import load_checkpoint
from twinsnn.errors import TwinsnnError
from twinsnn.run import RunLock
from twinsnn.api import fit


def _start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "twinsnn", "train", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(path, proc, timeout=200):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)


def _files(folder) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_second_process_on_a_run_folder_exits_2_naming_the_holder(tmp_path, tiny_fmnist):
    """The first process is frozen (SIGSTOP) once it has written run.json; the second exits 2
    naming its PID and leaves every file as it was; the first then finishes as if alone."""
    args = ["--data-dir", tiny_fmnist, *TINY, "--set", "epochs=2", "--out-dir", tmp_path / "runs",
            "--name", "shared", "--quiet"]
    run = tmp_path / "runs" / "shared"
    first = _start(args, tmp_path)
    try:
        _wait_for(run / "run.json", first)
        first.send_signal(signal.SIGSTOP)
        before = _files(run)
        for extra in ([], ["--resume"]):
            second = twinsnn("train", *args, *extra, cwd=tmp_path)
            if extra and not (run / "checkpoint.pt").exists():
                assert_one_line_error(second, "nothing to resume")
            else:
                assert_one_line_error(second, f"PID {first.pid}", str(run))
            assert _files(run) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


@pytest.mark.slow
def test_the_lock_of_a_killed_process_does_not_block_its_resume(tmp_path, tiny_fmnist):
    args = ["--data-dir", tiny_fmnist, *TINY, "--set", "epochs=2", "--out-dir", tmp_path / "runs",
            "--name", "killed", "--quiet"]
    run = tmp_path / "runs" / "killed"
    proc = _start(args, tmp_path)
    _wait_for(run / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").read_text().strip() == str(proc.pid)  # left behind, not held
    twinsnn("train", *args, "--resume", cwd=tmp_path, check_rc=0)
    assert (run / "model.safetensors").exists()


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path):
    """flock belongs to the open file: two threads of one process exclude each other too."""
    first, second = RunLock(tmp_path / ".lock"), RunLock(tmp_path / ".lock")
    first.acquire()
    with pytest.raises(TwinsnnError, match=f"PID {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


@pytest.mark.slow
def test_fit_in_a_thread_stops_on_its_callback_and_resumes_bitwise(tmp_path, tiny_fmnist):
    runs = tmp_path / "runs"
    fit(config=tiny(tiny_fmnist, runs, "straight", **{"train.epochs": 3}), progress=False)
    seen, result = [], {}

    def stop_after_first(record):
        seen.append(record)
        return record["epoch"] == 0

    def train():
        result["record"] = fit(config=tiny(tiny_fmnist, runs, "stopped", **{"train.epochs": 3}),
                               progress=False, on_epoch_end=stop_after_first).record

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(timeout=300)
    run = runs / "stopped"
    assert [r["epoch"] for r in seen] == [0] and result["record"] is seen[0]
    assert "val_accuracy/0" in seen[0]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert not (run / "model.safetensors").exists()
    fit(config=tiny(tiny_fmnist, runs, "stopped", **{"train.epochs": 3}), resume=True, progress=False)
    a, b = (load_file(str(runs / name / "model.safetensors")) for name in ("straight", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_epochs_scalars(tmp_path, tiny_fmnist):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    fit(config=tiny(tiny_fmnist, runs, "board", **{"train.epochs": 2,
                                                    "train.tensorboard": True}), progress=False)
    metrics = [json.loads(line) for line in (runs / "board" / "metrics.jsonl").read_text()
               .splitlines()]
    events = EventAccumulator(str(runs / "board" / "tensorboard")).Reload()
    for name in ("train_loss", "val_accuracy/0", "lr", "firing_rate/convs.1"):
        steps = [(e.step, e.value) for e in events.Scalars(name)]
        want = [m["firing_rates"]["convs.1"] if name.startswith("firing") else m[name]
                for m in metrics]
        assert [s for s, _ in steps] == [0, 1]
        assert [v for _, v in steps] == pytest.approx(want, rel=1e-6)
