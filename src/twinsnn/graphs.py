"""The training step as a CUDA graph: captured once, replayed for every full batch.

A step of the spiking CIFARNet launches thousands of small kernels (each layer's BatchNorm
and LIF over T timesteps, Adam over every tensor); at small widths the GPU waits for the CPU
launching them. ``GraphedStep`` records a step (``cohort.train_step``) into a
``torch.cuda.CUDAGraph`` and replays it: the batch is copied into the graph's input tensors,
and the loss, its parts and the outputs come back in the graph's own tensors, overwritten by
the next replay (the training loop reads them before). What makes the step capturable:

- nothing in it waits for the device: no value is read back to the host, no tensor is made
  of host data (tested in tests/test_train_step.py);
- Adam runs ``capturable`` (its step counts live on the device) and, inside the graph, reads
  its learning rates from device tensors refreshed from the schedule's before every replay;
  the schedule and the checkpoints keep plain floats;
- autocast runs without its weight cache (``Cohort.autocast_cache``);
- the first ``WARMUP_STEPS`` full batches train eagerly on a side stream (they compile the
  LIF kernels and create Adam's state and the BLAS handles), and the next one is captured on
  that stream, then replayed;
- a changed forward (compression switched on) is captured anew; a batch of another size (an
  epoch's last) trains eagerly.

The numbers differ from the eager step's in rounding (capturable Adam computes its bias
corrections on the device) and in dropout's masks (drawn by the graph's generator offsets).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from . import quant
from .cohort import Cohort, set_capturable, train_step
from .distributed import World

WARMUP_STEPS = 3  # eager full batches on a side stream before the capture


@contextlib.contextmanager
def _learning_rates(optimizer: torch.optim.Optimizer, rates: list[torch.Tensor]):
    """Within the block, the optimizer's groups read their learning rates from ``rates``."""
    floats = [group["lr"] for group in optimizer.param_groups]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, floats):
            group["lr"] = value


class GraphedStep:
    """``step(x, y, share)``, an update of ``cohort`` (``cohort.train_step`` bound to it), for
    batches of ``batch_size`` on a CUDA device: replayed from a CUDA graph after
    ``WARMUP_STEPS`` eager runs. Returns what ``step`` returns."""

    def __init__(self, step: Callable, cohort: Cohort, batch_size: int):
        self.step, self.cohort, self.batch_size = step, cohort, batch_size
        self.device = cohort.device
        self.rates = [torch.zeros((), device=self.device) for _ in cohort.optimizer.param_groups]
        self.stream = torch.cuda.Stream(self.device)
        self.graph, self.compressed, self.warm = None, None, 0
        self.x = self.y = self.result = None
        cohort.autocast_cache = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor, share: float | None = None):
        if len(y) != self.batch_size:
            return self.step(x, y, share)
        compressed = quant.is_compressed(self.cohort.members[0])
        if compressed != self.compressed:
            self.graph, self.compressed, self.warm = None, compressed, 0
        if self.graph is None:  # also the first step after a checkpoint was loaded
            set_capturable(self.cohort.optimizer, True)
        if self.graph is None and self.warm < WARMUP_STEPS:
            self.warm += 1
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                result = self.step(x, y, share)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            return result
        if self.graph is None:
            self._capture(x, y, share)
        for rate, group in zip(self.rates, self.cohort.optimizer.param_groups):
            rate.fill_(group["lr"])
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.result

    def _capture(self, x: torch.Tensor, y: torch.Tensor, share: float | None) -> None:
        self.x, self.y = torch.empty_like(x), torch.empty_like(y)
        self.cohort.optimizer.zero_grad(set_to_none=True)  # gradients from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        # captured on the warm-up stream: the BLAS handles it created there are reused
        with _learning_rates(self.cohort.optimizer, self.rates), \
                torch.cuda.graph(self.graph, stream=self.stream):
            self.result = self.step(self.x, self.y, share)


def make_step(cohort: Cohort, strategy, train_cfg, world: World = World()) -> Callable:
    """``train_step`` bound to ``cohort`` and ``strategy``, called ``step(x, y, share)``; with
    ``train.cuda_graphs`` on a CUDA device in one process, replayed from a CUDA graph."""
    step = functools.partial(train_step, cohort, strategy)
    if train_cfg.cuda_graphs and cohort.device.type == "cuda" and not world.active:
        return GraphedStep(step, cohort, train_cfg.batch_size)
    return step
