"""Data-parallel training (torchrun, gloo on the CPU) against one process with the same
global batch: first-step gradients, the losses of 20 steps, and a killed run resumed.

The comparison runs in float64. In float32 a rank's BatchNorm statistics (sums over its
slice, then over ranks) differ from one process's in the last bit, and among the ~10^6
membrane potentials of a step one may sit that close to the threshold: the spike flips and
the runs part (docs/distributed.md). In float64 that takes ~10^9 times longer, so the test
checks the algebra of the sharding (loss shares, summed gradients, synchronized statistics,
sliced augmentation and dropout) and nothing else."""
import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_cli import TINY, twinsnn
from twinsnn.config import load_config
from twinsnn.models import MODELS

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
STEPS = 20
RANK_TIMEOUT = 300  # seconds a rank may take before it dumps its stack and exits


def config(data_dir):
    """TNA at width 1/16 with dropout, augmentation and the summed matching term at an alpha
    large enough to matter; 10 batches of 16 per epoch."""
    return load_config("fmnist-cpu-tna", {
        "data.dir": str(data_dir), "data.verify": False, "data.val_size": 40,
        "model.width": 0.0625, "train.batch_size": 16, "train.compile": False,
        "loss.alpha": 1e-2})


def train_steps(data_dir, dtype=torch.float64) -> dict:
    """``STEPS`` updates of a TNA cohort on the batches of epoch 0, as ``train_one_epoch``
    cuts, augments and shards them, then ``train_one_epoch`` itself for epoch 1, here or on
    every torchrun rank. Returns the loss parts of the whole batch at every step, every
    member's gradients at the first and the statistics of epoch 1."""
    import functools

    from twinsnn.cohort import derive_seed
    from twinsnn.data import build_data
    from twinsnn.data.feeds import TensorFeed
    from twinsnn.data.transforms import Preprocess
    from twinsnn.models import build_model
    from twinsnn.distributed import join, leave, synchronize_batchnorm
    from twinsnn.train import Parts, build_trainer, train_one_epoch

    torch.set_num_threads(1)
    cfg, cpu = config(data_dir), torch.device("cpu")
    world = join(cpu)
    data = build_data(cfg.data, cfg.model.timesteps)
    factory = functools.partial(build_model, cfg.model, data.num_classes, data.in_channels,
                                data.image_size)
    preprocess = Preprocess(data, True, cfg.train.channels_last)
    feed = TensorFeed(data.train, lambda x, g=None: preprocess(x, g).to(dtype), cpu)
    t = build_trainer(cfg, Parts(factory, feed), world=world)
    cohort, strategy = t.cohort, t.strategy
    for member in cohort.members:
        member.to(dtype)  # in place: the optimizer keeps its parameters
    if world.active:
        synchronize_batchnorm(cohort.members, cpu)
        cohort.parallel = world.parallel(cohort.members, cpu)
    bs, seed = cfg.train.batch_size, cfg.train.seed
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(
        derive_seed(seed, 0, "order")))
    aug = torch.Generator().manual_seed(derive_seed(seed, 0, "aug"))
    torch.manual_seed(derive_seed(seed, 0, "dropout"))
    losses, grads = [], None
    for step in range(STEPS):
        index = order[(step % 10) * bs:(step % 10 + 1) * bs]
        x, y = preprocess(data.train.x[index], aug).to(dtype), data.train.y[index]
        share = None
        if world.active:
            x, y, share = world.shard(cohort.members, x, y)
        _, parts, _ = t.step(x, y, share)
        names = ("ce/0", "ce/1", "match")
        losses.append(world.sum(torch.stack([parts[k].detach() for k in names])).tolist())
        if step == 0:
            grads = [[p.grad.clone() for p in m.parameters()] for m in cohort.members]
    stats = train_one_epoch(t, 1)
    leave(world, cohort)
    return {"losses": losses, "grads": grads, "epoch": stats}


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path, tiny_fmnist):
    """torchrun with 2 ranks against one process (one test: the ranks run once however the
    suite is spread over workers). First-step gradients of base and twin; the losses of 20
    steps, CE of each member and the summed matching term, each of the whole batch; and
    ``train_one_epoch``'s sums (loss, accuracies, agreement, loss parts) over both ranks."""
    proc = subprocess.run([*TORCHRUN, __file__, str(tiny_fmnist), str(tmp_path / "ranks.pt")],
                          capture_output=True, text=True, timeout=2 * RANK_TIMEOUT, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-8000:]
    ranks, one = torch.load(tmp_path / "ranks.pt"), train_steps(tiny_fmnist)

    for member in range(2):  # base and twin
        for g2, g1 in zip(ranks["grads"][member], one["grads"][member]):
            assert torch.allclose(g2, g1, rtol=1e-5, atol=1e-5 * g1.abs().max().item()), \
                (member, (g2 - g1).abs().max().item(), g1.abs().max().item())

    losses2, losses1 = torch.tensor(ranks["losses"]), torch.tensor(one["losses"])
    assert losses2.shape == (STEPS, 3)
    assert torch.allclose(losses2, losses1, rtol=1e-3, atol=0), (losses2 - losses1).abs().max()
    assert losses1[-1, :2].mean() < losses1[0, :2].mean()  # it learns

    epoch2, epoch1 = ranks["epoch"], one["epoch"]
    assert epoch2.keys() == epoch1.keys()
    for key in epoch1.keys() - {"samples_per_s"}:
        assert epoch2[key] == pytest.approx(epoch1[key], rel=1e-6), key
    assert epoch1["train_accuracy/0"] * 160 == pytest.approx(round(epoch1["train_accuracy/0"] * 160))


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tna_train_args(data_dir, runs) -> list:
    """``twinsnn train`` of a tiny TNA run named ``ddp`` under ``runs``."""
    return ["train", "--data-dir", data_dir, *TINY, "--set", "strategy=tna", "--out-dir", runs,
            "--name", "ddp", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_two_process_run_ends_cleanly_across_the_compression_switch(tmp_path, tiny_fmnist,
                                                                    arch):
    """torchrun with 2 processes to the end of a TNA run whose base goes ternary at epoch 1
    (the parametrization moves the weights DDP had hooked), for every architecture: both
    ranks leave (the DDP module is released before its process group), the model is
    written, every epoch logged once."""
    args = tna_train_args(tiny_fmnist, tmp_path / "runs")
    proc = subprocess.run([*TORCHRUN, "-m", "twinsnn", *map(str, args), "--set", "epochs=3",
                           "--set", "quant.mode=ternary", "--set", "quant.start_epoch=1",
                           "--set", f"model.arch={arch}", "--set", "model.timesteps=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=2 * RANK_TIMEOUT,
                          env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert (run / "model.safetensors").exists()
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["compressed"]) for m in metrics] == [(0, False), (1, True), (2, True)]


@pytest.mark.slow
def test_killed_two_process_run_resumes_in_one_process(tmp_path, tiny_fmnist):
    """torchrun with 2 processes, killed once it has written a checkpoint, resumed by one
    process: every epoch logged once, the model written."""
    runs = tmp_path / "runs"
    args = tna_train_args(tiny_fmnist, runs)
    run = runs / "ddp"
    proc = subprocess.Popen([*TORCHRUN, "-m", "twinsnn", *map(str, args), "--set", "epochs=3"],
                            cwd=tmp_path, env=ONE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    for pid in [*_descendants(proc.pid), proc.pid]:  # both ranks, then torchrun
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    twinsnn(*args, "--set", "epochs=3", "--resume", cwd=tmp_path, check_rc=0)
    assert (run / "model.safetensors").exists()
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert json.loads((run / "run.json").read_text())["processes"] == 2


if __name__ == "__main__":  # a torchrun rank: python test_distributed.py DATA_DIR OUT [DTYPE]
    faulthandler.dump_traceback_later(RANK_TIMEOUT, exit=True)  # a stuck rank shows where
    result = train_steps(Path(sys.argv[1]), getattr(torch, (sys.argv[3:] or ["float64"])[0]))
    if int(os.environ["RANK"]) == 0:
        torch.save(result, sys.argv[2])
