"""Deterministic training, numerical faults, unwritable outputs and interruption."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_fmnist
from test_cli import TINY, assert_one_line_error, cli, twinsnn
from twinsnn.checkpoint import atomic_write, load_checkpoint
from twinsnn.config import load_config
from twinsnn.errors import TrainingError, TwinsnnError, WriteError
from twinsnn.run import cpu_info
from twinsnn.api import fit


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs on one thread, as the command-line tests run (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(data_dir, out_dir, name: str, **overrides):
    """The fmnist-cpu preset shrunk to seconds: width 1/16, 2 epochs of 5 batches of 32."""
    return load_config("fmnist-cpu", {
        "data.dir": str(data_dir), "data.verify": False, "data.val_size": 40,
        "model.width": 0.0625, "train.epochs": 2, "train.batch_size": 32,
        "train.eval_batch_size": 100, "train.compile": False, "out_dir": str(out_dir),
        "name": name, **overrides})


def weights(run) -> dict:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_same_config_and_seed_give_bitwise_identical_weights(tmp_path, tiny_fmnist):
    runs = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 0), ("other-seed", 1)):
        fit(config=tiny(tiny_fmnist, runs, name, **{"train.seed": seed, "train_limit": 64}),
            progress=False)
    a, b, other = (weights(runs / name) for name in ("a", "b", "other-seed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())
    metrics = [(runs / name / "metrics.jsonl").read_text().splitlines() for name in ("a", "b")]
    losses = [[json.loads(line)["train_loss"] for line in lines] for lines in metrics]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert json.loads((runs / "a" / "run.json").read_text())["deterministic"] is True


@pytest.mark.slow
def test_bf16_training_is_deterministic_and_differs_from_fp32(tmp_path, tiny_fmnist):
    runs = tmp_path / "runs"
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16-again", "bf16")):
        fit(config=tiny(tiny_fmnist, runs, name, **{"train.precision": precision, "epochs": 1,
                                             "train_limit": 64}), progress=False)
    fp32, bf16, again = (weights(runs / name) for name in ("fp32", "bf16", "bf16-again"))
    assert all(v.dtype == fp32[k].dtype for k, v in bf16.items())  # weights stay float32
    assert all(torch.equal(bf16[k], again[k]) for k in bf16)
    assert any(not torch.equal(bf16[k], fp32[k]) for k in bf16 if bf16[k].is_floating_point())


def test_nan_in_the_first_epoch_stops_without_writing_a_model(tmp_path, tiny_fmnist):
    cfg = tiny(tiny_fmnist, tmp_path / "runs", "diverges", **{"train.lr": 1e37})
    with pytest.raises(TrainingError, match=r"loss is not finite at epoch 0 step \d+") as err:
        fit(config=cfg, progress=False)
    assert "no checkpoint had been written yet" in str(err.value)
    run = tmp_path / "runs" / "diverges"
    assert not (run / "model.safetensors").exists() and not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_nan_after_a_good_epoch_keeps_its_checkpoint(tmp_path, tiny_fmnist):
    """Epoch 0 trains at a sane rate; the schedule then multiplies it by 1e38."""
    cfg = tiny(tiny_fmnist, tmp_path / "runs", "diverges-later", **{
        "train.lr_step_unit": "epoch", "train.lr_step_size": 1, "train.lr_gamma": 1e38})
    run = tmp_path / "runs" / "diverges-later"
    with pytest.raises(TrainingError, match=r"loss is not finite at epoch 1 step \d+") as err:
        fit(config=cfg, progress=False)
    assert f"the last good checkpoint {run / 'checkpoint.pt'} is kept" in str(err.value)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 0
    assert all(torch.isfinite(v).all() for v in state["members"][0].values()
               if v.is_floating_point())
    assert [json.loads(line)["epoch"] for line in
            (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (run / "model.safetensors").exists()


@pytest.mark.slow
def test_non_finite_weights_are_never_checkpointed(tmp_path, tiny_fmnist, monkeypatch):
    """A step with a finite loss can still leave non-finite weights (an overflowing
    gradient): the run stops before a checkpoint would hold them."""
    adam_step, calls = torch.optim.Adam.step, []

    def overflowing(self, *args, **kwargs):
        result = adam_step(self, *args, **kwargs)
        calls.append(None)
        if len(calls) == 5:  # the last of epoch 0's 5 steps
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", overflowing)
    run = tmp_path / "runs" / "poisoned"
    with pytest.raises(TrainingError, match="the weights are not finite at epoch 0 step 4"):
        fit(config=tiny(tiny_fmnist, tmp_path / "runs", "poisoned"), progress=False)
    assert not (run / "checkpoint.pt").exists() and not (run / "model.safetensors").exists()


@pytest.mark.slow
def test_nan_through_the_cli_is_one_line_naming_epoch_and_step(tmp_path, tiny_fmnist, capsys):
    proc = cli(capsys, "train", "--data-dir", tiny_fmnist, *TINY, "--set", "train.lr=1e37",
               "--out-dir", tmp_path / "runs", "--quiet")
    assert_one_line_error(proc, "epoch 0", "step", "lower train.lr")
    assert not list((tmp_path / "runs").rglob("model.safetensors"))


def test_unwritable_output_folder_is_refused_before_anything_loads(tmp_path, capsys):
    """Under a regular file no folder can be made, even by root; the data folder does not
    exist, so an error about the output proves nothing was loaded first."""
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "runs"
    cfg = tiny(tmp_path / "no-data", out, "run")
    with pytest.raises(TwinsnnError, match="cannot write to run folder") as err:
        fit(config=cfg, progress=False)
    assert str(out / "run") in str(err.value)
    proc = cli(capsys, "train", "--data-dir", tmp_path / "no-data", "--out-dir", out)
    assert_one_line_error(proc, "cannot write to run folder", str(out))


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"previous")

    def disk_full(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write(path, disk_full)

    def killed(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, killed)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    import numpy as np

    from twinsnn.checkpoint import save_checkpoint, save_model
    from twinsnn.config import ModelConfig
    from twinsnn.data import cache
    from twinsnn.packed import export_packed
    from twinsnn.models import cifarnet, model_spec

    model = cifarnet(ModelConfig(width=0.0625), 10, 1, (28, 28))
    meta = {"model": model_spec(ModelConfig(width=0.0625), 10, 1, (28, 28))}
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "checkpoint.pt", {"members": [model.state_dict()]})
        save_model(tmp_path / "model.safetensors", model, meta)
        export_packed(model, tmp_path / "model.tnn", meta)
        cache.write(tmp_path / "cache.bin", {"recordings": 1},
                    [np.zeros(1, np.int64), np.zeros((1, 2, 2, 4, 4), np.float16)])
        atomic_write(tmp_path / "run.json", lambda tmp: open(tmp, "w").write("{}\n"))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["checkpoint.pt", "model.safetensors", "model.tnn",
                                   "cache.bin", "run.json"], oct(0o666 & ~umask))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The run a stopped and resumed run must end as: 2 epochs of 20 batches, uninterrupted."""
    root = tmp_path_factory.mktemp("signals")
    args = ["--data-dir", write_tiny_fmnist(root), *TINY, "--set", "epochs=2",
            "--set", "batch_size=8", "--out-dir", root / "runs", "--quiet"]
    twinsnn("train", *args, "--name", "straight", cwd=root, check_rc=0)
    return root, args


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_mid_epoch_and_the_run_resumes_bitwise(straight_run, signum):
    root, args = straight_run
    name = f"stopped-{signum.name}"
    run = root / "runs" / name
    proc = subprocess.Popen([sys.executable, "-m", "twinsnn", "train", *map(str, args), "--name",
                             name], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 200
    while not (run / "run.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    # run.json appears once the handler is in place; signal at once, while the run is young
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "twinsnn: interrupted; a checkpoint was written, continue with --resume")
    assert "Traceback" not in err
    state = load_checkpoint(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) < (2, 0)
    twinsnn("train", *args, "--name", name, "--resume", cwd=root, check_rc=0)
    a, b = weights(root / "runs" / "straight"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the numbers of training stay as they were -----------------------------------------

GOLDEN_RUNS = {  # tiny runs that pass through TNA, both quantizers, the switch and the schedule
    "tna-ternary": {"loss.strategy": "tna", "quant.mode": "ternary", "quant.start_epoch": 1,
                    "quant.lr_at_switch": 0.004},
    "single-binary": {"quant.mode": "binary", "quant.start_epoch": 1,
                      "train.lr_step_unit": "epoch", "train.lr_step_size": 1},
}
# They run with BatchNorm before the LIF, as when they were recorded on every platform below
# (the fused path's agreement with it is tested in test_batchnorm_lif.py, its determinism by
# the resume tests above).
GOLDEN_UNFUSED = {"train.fuse_norm": False}
# What those runs gave when this test was written (weights and metrics, times left out, as
# SHA-256 prefixes). Floating-point sums depend on the CPU's vector instructions and on
# torch, so the numbers are compared where they were recorded; record another platform with
# `python tests/test_reproducibility.py`.
GOLDEN = {
    "Intel(R) Xeon(R) Processor (family 6 model 207) | AVX512 | isa -,- | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "1dfaf8d7f1d76298", "metrics": "cfc90ac0bb20e898"},
        "single-binary": {"weights": "f9986e9694feaf02", "metrics": "36a8b0cd8e63b80e"}},
    "Intel(R) Xeon(R) Processor (family 6 model 207) | AVX2 | isa AVX2,AVX2 | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "a2f7ffbe6f5d35ff", "metrics": "08df84431d177ba8"},
        "single-binary": {"weights": "fba67fb8b145a106", "metrics": "09cfef5fc21e7c08"}},
    "AMD EPYC (family 26 model 2) | AVX512 | isa -,- | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "e8d76cac184defc3", "metrics": "ad79135d71b41a55"},
        "single-binary": {"weights": "32a39ab386d3378f", "metrics": "92cef3caa7af9f7e"}},
    "AMD EPYC (family 26 model 2) | AVX512 | isa AVX2,AVX2 | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "8d826582e529fb48", "metrics": "fee6d9efac94881b"},
        "single-binary": {"weights": "c03e8a1388359fe5", "metrics": "612a6281124453d5"}},
    "Intel(R) Xeon(R) Processor (family 6 model 167) | AVX512 | isa AVX2,AVX2 | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "ef007c661a25c527", "metrics": "2c45eafafc82f6ee"},
        "single-binary": {"weights": "fdff82341ec0ad53", "metrics": "7cd2c3cc6e0d8a86"}},
    "AMD EPYC (family 25 model 1) | AVX2 | isa -,- | torch 2.13.0+cpu": {
        "tna-ternary": {"weights": "702d6717a225bcb1", "metrics": "6bf4dfa7266d0d1e"},
        "single-binary": {"weights": "01d6675ea243ab5c", "metrics": "ee5c1d2ff9eb85a4"}},
}
# Measured: Zen 4 computes bitwise as Zen 5 at both levels; Intel model 167 as model 207 with
# AVX-512, not when held to AVX2.
for same, recorded, isas in (("AMD EPYC (family 25 model 17)", "AMD EPYC (family 26 model 2)",
                              ("-,-", "AVX2,AVX2")),
                             ("Intel(R) Xeon(R) Processor (family 6 model 167)",
                              "Intel(R) Xeon(R) Processor (family 6 model 207)", ("-,-",))):
    for isa in isas:
        GOLDEN[f"{same} | AVX512 | isa {isa} | torch 2.13.0+cpu"] = \
            GOLDEN[f"{recorded} | AVX512 | isa {isa} | torch 2.13.0+cpu"]


def platform_key() -> str:
    """CPU name with family and model (one marketing name spans generations), the vector
    level torch dispatches to, the oneDNN/MKL limits, torch's version."""
    cpu = cpu_info()
    isa = ",".join(cpu["isa_limits"].get(k, "-") for k in ("ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS"))
    return (f"{cpu['cpu']} (family {cpu['family'] or '?'} model {cpu['model'] or '?'}) | "
            f"{cpu['torch_capability']} | isa {isa} | torch {torch.__version__}")


def run_digests(data_dir, out_dir) -> dict:
    digests = {}
    for name, overrides in GOLDEN_RUNS.items():
        fit(config=tiny(data_dir, out_dir, name, **GOLDEN_UNFUSED, **overrides), progress=False)
        tensors = weights(out_dir / name)
        # the keys as they were spelled when the digests were recorded (val_acc/0)
        metrics = [{k.replace("_accuracy/", "_acc/"): v for k, v in json.loads(line).items()
                    if k not in ("epoch_time_s", "samples_per_s")}
                   for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
        digests[name] = {
            "weights": hashlib.sha256(b"".join(k.encode() + tensors[k].numpy().tobytes()
                                               for k in sorted(tensors))).hexdigest()[:16],
            "metrics": hashlib.sha256(json.dumps(metrics).encode()).hexdigest()[:16]}
    return digests


@pytest.mark.slow
@pytest.mark.skipif(platform_key() not in GOLDEN, reason=f"no numbers recorded for this "
                    f"platform ({platform_key()})")
def test_training_numbers_are_bitwise_those_recorded(tmp_path, tiny_fmnist):
    assert run_digests(tiny_fmnist, tmp_path / "runs") == GOLDEN[platform_key()]


if __name__ == "__main__":  # print this platform's GOLDEN entry
    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_fmnist(Path(tmp))
        print(f"    {platform_key()!r}: {run_digests(folder, Path(tmp) / 'runs')!r},")


@pytest.mark.slow
def test_validation_every_other_epoch_logs_it_there_and_at_the_end_and_trains_the_same(
        tmp_path, tiny_fmnist):
    """``train.val_every=2`` over 3 epochs validates after epochs 1 and 2 (the last) only,
    and validation changes nothing of training: the models are bitwise those of a run that
    validates every epoch."""
    runs = tmp_path / "runs"
    for name, every in (("every", 1), ("other", 2)):
        fit(config=tiny(tiny_fmnist, runs, name, **{"train.epochs": 3, "train.val_every": every}),
            progress=False)
    logged = [json.loads(line) for line in (runs / "other" / "metrics.jsonl").read_text()
              .splitlines()]
    assert [("val_accuracy/0" in m) for m in logged] == [False, True, True]
    every, other = weights(runs / "every"), weights(runs / "other")
    assert all(torch.equal(every[k], other[k]) for k in every)
