"""The training step: neither it nor the batch preparation before it waits for the device
(what lets a GPU run ahead and a CUDA graph capture the step), a graphed run's checkpoint
resumes anywhere, and replayed from a CUDA graph the step trains as the eager step does (that
part on CUDA only)."""
import copy
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from twinsnn import quant
from twinsnn.cohort import set_capturable
from twinsnn.config import load_config
from twinsnn.data.transforms import Preprocess
from twinsnn.graphs import WARMUP_STEPS
from twinsnn.run import checkpoint_state, restore
from twinsnn.models import build_model
from twinsnn.train import Parts, build_trainer

from benchmarks.train_step import random_data

BATCH = 8
TERNARY = {"quant.mode": "ternary", "quant.delta_rule": "mean_abs", "quant.delta": 0.5}
# the operators that wait for the device: those that copy a device value to the host, and
# the one that makes a tensor of host data (``torch.tensor``), a copy to a GPU that waits
WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
         torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default,
         torch.ops.aten.lift_fresh.default}


class Waits(TorchDispatchMode):
    """Records every operator of ``WAITS`` run inside the block, except on the tensors in
    ``allowed``."""

    def __init__(self, allowed=()):
        super().__init__()
        self.allowed, self.calls = {id(t) for t in allowed}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in WAITS and not (args and id(args[0]) in self.allowed):
            self.calls.append(func)
        return func(*args, **(kwargs or {}))


def cohort_and_step(device, **sets):
    cfg = load_config("fmnist-cpu", {"model.width": 0.125, "train.batch_size": BATCH,
                                     "train.device": device.type, **sets})
    data = random_data(BATCH, (1, 28, 28))
    t = build_trainer(cfg, Parts(lambda: build_model(cfg.model, 10, 1, (28, 28))))
    x = data.train.x.to(device).contiguous(memory_format=torch.channels_last)
    return cfg, t.cohort, t.step, x, data.train.y.to(device)


@pytest.mark.slow
@pytest.mark.parametrize("sets", [
    {"loss.strategy": "single"},
    {"loss.strategy": "tna", "train.precision": "bf16"},
    {"loss.strategy": "tna", "train.fuse_norm": False},
    {"loss.strategy": "tna", **TERNARY},
])
def test_a_training_step_waits_for_nothing(sets):
    # the eager LIF kernels: the compiled ones run the same code, out of the dispatcher's sight
    cfg, cohort, step, x, y = cohort_and_step(torch.device("cpu"), **sets,
                                              **{"train.compile": False})
    quant.set_compression(cohort.members[0], cfg.quant, cfg.quant.start_epoch, cohort.layers,
                          cohort.scales)
    assert quant.is_compressed(cohort.members[0]) == (cfg.quant.mode != "none")
    step(x, y)  # Adam's state exists from here on
    # Adam keeps its step counts on the host unless capturable: reading those waits for nothing
    counts = [s["step"] for s in cohort.optimizer.state.values()]
    with Waits(allowed=counts) as mode:
        step(x, y)
    assert mode.calls == []


@pytest.mark.parametrize("augmentation, shape", [("crop_flip", (BATCH, 3, 32, 32)),
                                                 ("rotate_shear", (BATCH, 4, 2, 48, 48))])
def test_preparing_a_batch_waits_for_nothing(augmentation, shape):
    data = dataclasses.replace(random_data(BATCH, (1, 28, 28)), augmentation=augmentation,
                               mean=(0.5,) * shape[-3], std=(0.2,) * shape[-3])
    preprocess = Preprocess(data, augment=True, channels_last=True)
    images, generator = torch.randint(0, 256, shape, dtype=torch.uint8), torch.Generator()
    preprocess(images, generator)  # the statistics are on the device from here on
    with Waits() as mode:
        preprocess(images, generator)
    assert mode.calls == []


def test_the_probe_sees_what_waits():
    with Waits() as mode:
        torch.ones(3).sum().item()
        bool(torch.ones(3).any())
        torch.tensor([0.5, 0.2])
    assert len(mode.calls) == 3


def test_a_checkpoint_of_a_graphed_run_resumes_without_graphs(tmp_path):
    """A graphed run saves Adam ``capturable`` (CPU Adam refuses to step so); the run that
    loads the checkpoint runs Adam as it chose, and its next step is the step the saving
    cohort takes."""
    device = torch.device("cpu")
    cfg, saved, step, x, y = cohort_and_step(device, **{"train.compile": False})
    step(x, y)
    set_capturable(saved.optimizer, True)  # as graphs.GraphedStep leaves it
    state = copy.deepcopy(checkpoint_state(cfg, saved, 1))  # as written: no shared tensors
    _, loaded, resumed_step, _, _ = cohort_and_step(device, **{"train.compile": False})
    restore(loaded, state, cfg, tmp_path / "checkpoint.pt")
    assert loaded.optimizer.param_groups[0]["capturable"] is False
    torch.manual_seed(1)
    resumed_step(x, y)
    set_capturable(saved.optimizer, False)
    torch.manual_seed(1)
    step(x, y)
    for a, b in zip(saved.members[0].parameters(), loaded.members[0].parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_steps_train_as_eager_steps():
    """Graph replays (after the warm-up steps), a schedule step and the switch to compression
    (a new capture) give the losses and parameters of eager steps with the same (capturable)
    Adam, up to the order of floating-point sums."""
    device = torch.device("cuda")
    sets = {"loss.strategy": "tna", "model.dropout": 0.0, "train.compile": True, **TERNARY}
    runs = []
    for graphs in (False, True):
        cfg, cohort, step, x, y = cohort_and_step(device, **sets, **{"train.cuda_graphs": graphs})
        set_capturable(cohort.optimizer, True)
        losses = []
        for i in range(2 * WARMUP_STEPS + 4):
            if i == WARMUP_STEPS + 2:
                cohort.scheduler.step()
                assert quant.set_compression(cohort.members[0], cfg.quant, cfg.quant.start_epoch,
                                             cohort.layers, cohort.scales)
            losses.append(step(x, y)[0].detach().clone())
        losses.append(step(x[:3], y[:3])[0].detach().clone())  # another size runs eagerly
        runs.append((torch.stack(losses), [p.detach().clone() for m in cohort.members
                                           for p in m.parameters()]))
    (eager_loss, eager_params), (graph_loss, graph_params) = runs
    assert type(step).__name__ == "GraphedStep" and step.graph is not None
    torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(graph_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
