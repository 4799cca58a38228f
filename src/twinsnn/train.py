"""The training loop: one code path for every strategy, model, data source and device.

``build_trainer`` puts a ``Trainer`` together from a config and its ``Parts`` (the model
factory, the feeds, the strategy); the API, the tests and the benchmarks all build it so.
``train`` runs the epochs; ``run_epoch`` is an epoch of the paper's procedure (compression
switched on at ``quant.start_epoch``, section 4.2; a pass over the training feed,
``train_one_epoch``; validation) and reports it to the trainer's ``Sink``: the run folder
(``run.RunFolder``) keeps its record and checkpoint, ``Discard`` keeps nothing. All
randomness of epoch ``e`` (data order, augmentation, dropout) is drawn from generators seeded
by ``(seed, e)``, so a resumed run continues bitwise. Started by ``torchrun``, every process
trains on its slice of each batch (``distributed``); rank 0 alone validates and reports.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from . import metrics, quant
from .cohort import Cohort, build_cohort, derive_seed
from .config import Config
from .distributed import World
from .errors import ConfigError, Interrupted, TrainingError
from .graphs import make_step
from .evaluation import evaluate
from .neurons import reset_states
from .quant import Selector
from .runtime import resolve_device
from .strategies import Strategy, from_config
from .sums import EpochSums

LOSS_CHECK_EVERY = 50  # steps between the device-to-host reads of the loss check
SHOW_EVERY_ON_CPU = 10  # steps between progress bar figures; elsewhere at the loss check


class Sink(Protocol):
    """Where the loop reports; ``run.RunFolder`` is one, ``Discard`` another."""

    def log(self, record: dict) -> None:
        """Keep one epoch's record (``metrics``), before the checkpoint that follows it."""

    def save(self, cohort: Cohort, epoch: int, step: int = 0, rng: dict | None = None,
             sums: dict | None = None) -> None:
        """Keep a checkpoint of ``cohort`` at ``(epoch, step)``: at an epoch's end ``step``
        is 0; mid-epoch the RNG states and the epoch's sums come with it."""

    def fault(self, what: str, epoch: int, step: int) -> TrainingError:
        """The error that stops a run whose numbers are no longer finite, saying what was
        kept."""


class Discard:
    """A ``Sink`` that keeps nothing (tests, benchmarks)."""

    def log(self, record: dict) -> None:
        pass

    def save(self, cohort: Cohort, epoch: int, step: int = 0, rng: dict | None = None,
             sums: dict | None = None) -> None:
        pass

    def fault(self, what: str, epoch: int, step: int) -> TrainingError:
        return TrainingError(f"{what} at epoch {epoch} step {step}")


class StopSignal:
    """SIGINT/SIGTERM set ``requested``; the loop finishes its step, checkpoints and stops.
    Python delivers signals to the main thread only, so elsewhere no handler is installed."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT,
                                                                     signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame):
        self.requested = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Parts:
    """What a trainer is made of besides its config."""

    factory: Callable[[], nn.Module]  # a fresh network per call (one per member)
    train: object = None  # the feed of the training split (data.feeds)
    evals: dict = field(default_factory=dict)  # the evaluated feeds: {"val": ..., "test": ...}
    strategy: Strategy | None = None  # default: loss.strategy, built from the loss.* keys
    teacher: nn.Module | None = None  # the frozen network of kd and kd+ce
    reset: Callable[[nn.Module], None] = reset_states  # clears a network's state per batch
    layers: Selector = None  # which of the base's layers compression takes (quant.select_layers)
    meta: dict = field(default_factory=dict)  # how to rebuild and feed the base
    example: torch.Tensor | None = None  # a training batch, where quant.scale=auto looks
    # for the normalization after each layer of a network that is not a SpikingNetwork


@dataclass
class Trainer:
    """What the loop works on: the config, the cohort and its strategy, ``step`` (an update
    of the cohort on a batch: ``cohort.train_step`` or its CUDA graph), the feeds, the sink,
    the stop flag and this process's place among the ranks."""

    cfg: Config
    cohort: Cohort
    strategy: Strategy
    step: Callable
    train: object
    evals: dict
    sink: Sink
    stop: StopSignal
    world: World
    progress: bool


def build_trainer(cfg: Config, parts: Parts, sink: Sink | None = None,
                  world: World = World(), progress: bool = False) -> Trainer:
    """The cohort of ``cfg`` made from ``parts`` on the config's device (this rank's GPU
    under torchrun), its strategy and step, reporting to ``sink`` (default ``Discard``);
    ``progress``: a progress bar per epoch."""
    strategy = parts.strategy or from_config(cfg.loss)
    device = world.device(resolve_device(cfg.train.device))
    cohort = build_cohort(cfg, parts.factory, strategy, device, parts.teacher, parts.meta,
                          parts.reset, parts.layers, parts.example)
    return Trainer(cfg, cohort, strategy, make_step(cohort, strategy, cfg.train, world),
                   parts.train, parts.evals, sink or Discard(), StopSignal(), world, progress)


class LossWatch:
    """Whether every step's loss of an epoch was finite, checked without waiting for the
    device at each step: the first bad step is kept on the device and read every
    ``LOSS_CHECK_EVERY`` steps (``see``) and when asked (``check``), on every rank alike."""

    def __init__(self, t: Trainer, epoch: int):
        self.t, self.epoch = t, epoch
        self.first_bad = torch.full((), -1, dtype=torch.long, device=t.cohort.device)

    def see(self, loss: torch.Tensor, step: int) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()),
                                     step, self.first_bad)
        if step % LOSS_CHECK_EVERY == LOSS_CHECK_EVERY - 1:
            self.check(step)

    def check(self, step: int) -> None:
        """Stop (on every rank) if a loss so far was not finite; ``step``: the current one."""
        bad = int(self.first_bad)
        if self.t.world.any(bad >= 0, self.first_bad.device):
            raise self.t.sink.fault("loss is not finite", self.epoch, bad if bad >= 0 else step)


def check_weights(t: Trainer, epoch: int, step: int) -> None:
    """Before a checkpoint is written: every weight and statistic is finite (a finite loss
    does not prove it of the weights the last step produced)."""
    for member in t.cohort.members:
        for value in member.state_dict().values():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise t.sink.fault("the weights are not finite", epoch, step)


class Progress:
    """An epoch's progress bar (hidden without ``Trainer.progress``) with the loss, the base's
    accuracy and the samples per second; its figures read the device, so elsewhere than on
    the CPU they refresh only at the loss check."""

    def __init__(self, t: Trainer, epoch: int, steps: int, first_step: int, seen: int):
        self.on, self.steps = t.progress, steps
        self.every = SHOW_EVERY_ON_CPU if t.cohort.device.type == "cpu" else LOSS_CHECK_EVERY
        self.bar = tqdm(total=steps, initial=first_step, disable=not t.progress,
                        desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True,
                        mininterval=1.0)
        self.t0, self.seen0 = time.perf_counter(), seen

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def update(self, step: int, sums: EpochSums) -> None:
        self.bar.update()
        if self.on and ((step + 1) % self.every == 0 or step == self.steps - 1):
            self.bar.set_postfix(loss=f"{sums.mean_loss():.3f}", acc=f"{sums.accuracy():.3f}",
                                 samples_s=f"{(sums.seen - self.seen0) / self.seconds():.0f}")

    def close(self) -> None:
        self.bar.close()


def _check_batches(t: Trainer) -> None:
    """Every rank gets a part of every batch."""
    n, bs, size = len(t.train), t.cfg.train.batch_size, t.world.size
    if t.train.smallest_batch(bs) < size:
        raise ConfigError(f"a batch of the {n} training samples is smaller than the {size} "
                          "processes; lower the number of processes or raise "
                          "train.batch_size")


def _epoch_start(t: Trainer, epoch: int, state: dict | None):
    """The epoch's data order and augmentation generator, dropout's seed set, and where it
    starts: ``(order, aug, first_step, sums)``, from ``state``'s step and RNG states when
    that is a mid-epoch checkpoint (rank 0 continues its sums, the others start from 0)."""
    seed, device = t.cfg.train.seed, t.cohort.device
    order = torch.randperm(len(t.train), generator=torch.Generator().manual_seed(
        derive_seed(seed, epoch, "order")))
    aug = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, "aug"))
    torch.manual_seed(derive_seed(seed, epoch, "dropout"))
    first_step, sums = 0, EpochSums.zeros(len(t.cohort.members), device)
    if state is not None and state["step"]:
        first_step = state["step"]
        if t.world.writer:
            sums = EpochSums.from_state(state["sums"], device)
        torch.set_rng_state(state["rng"]["torch"])
        aug.set_state(state["rng"]["aug"])
    return order, aug, first_step, sums


def _train_batch(t: Trainer, x: torch.Tensor, y: torch.Tensor, sums: EpochSums, epoch: int,
                 step: int) -> torch.Tensor:
    """One step on a batch (this rank's slice of it), the schedule where it steps per batch,
    the batch added to ``sums``; returns the loss (on the device, unchecked)."""
    batch, share = len(y), None
    if t.world.active:
        x, y, share = t.world.shard(t.cohort.members, x, y)
    try:
        loss, parts, outputs = t.step(x, y, share)
    except FloatingPointError as e:
        raise t.sink.fault(str(e), epoch, step) from None
    if t.cfg.train.lr_step_unit == "batch":
        t.cohort.scheduler.step()
    sums.add(loss, parts, outputs, y, batch)
    return loss


def train_one_epoch(t: Trainer, epoch: int, state: dict | None = None) -> dict | None:
    """One pass over the training feed in the order, augmentation and dropout of
    ``(seed, epoch)``, from ``state``'s step when that is a mid-epoch checkpoint. Returns the
    epoch's training statistics, or None after a mid-epoch checkpoint when stopped."""
    _check_batches(t)
    for member in t.cohort.members:
        member.train()
    steps, seed = t.train.steps(t.cfg.train.batch_size), t.cfg.train.seed
    order, aug, first_step, sums = _epoch_start(t, epoch, state)
    batches = t.train.epoch(order, t.cfg.train.batch_size, aug, first_step,
                            derive_seed(seed, epoch, "loader"))
    progress = Progress(t, epoch, steps, first_step, sums.seen)
    watch = LossWatch(t, epoch)
    step = first_step - 1
    for step, (x, y) in enumerate(batches, start=first_step):
        watch.see(_train_batch(t, x, y, sums, epoch, step), step)
        progress.update(step, sums)
        if t.world.any(t.stop.requested, t.cohort.device) and step + 1 < steps:
            watch.check(step)
            check_weights(t, epoch, step)
            rng = {"torch": torch.get_rng_state(), "aug": aug.get_state()}
            t.sink.save(t.cohort, epoch, step + 1, rng, sums.over_ranks(t.world).state())
            progress.close()
            return None
    progress.close()
    watch.check(step)
    check_weights(t, epoch, step)
    return sums.over_ranks(t.world).stats(progress.seen0, progress.seconds())


def validate(t: Trainer) -> dict:
    """Accuracy and loss of every member on each evaluated split (validation, and with
    ``train.eval_test`` test); firing rates of the base on validation."""
    out = {}
    for split, feed in t.evals.items():
        if feed is None or len(feed) == 0:
            continue
        for i, member in enumerate(t.cohort.members):
            result = evaluate(member, feed, t.cfg.train.eval_batch_size, t.cohort.reset)
            out[metrics.member_key(split, metrics.ACCURACY, i)] = result[metrics.ACCURACY]
            out[metrics.member_key(split, metrics.LOSS, i)] = result[metrics.LOSS]
            if i == 0 and split == "val":
                out[metrics.FIRING_RATES] = result[metrics.FIRING_RATES]
    return out


SUMMARY = [metrics.TRAIN_LOSS, *(metrics.member_key(split, metrics.ACCURACY)
                                 for split in ("train", "val", "test")), "lr", "epoch_time_s"]


def summary_line(record: dict) -> str:
    shown = " ".join(f"{k}={record[k]:.4g}" for k in SUMMARY if k in record)
    return f"epoch {record['epoch']}: {shown}"


def _switch(t: Trainer, epoch: int, mid_epoch: bool) -> bool:
    """Compression on from ``quant.start_epoch`` (with ``quant.lr_at_switch`` set there, and
    the strategy told so); the data-parallel wrapper made anew when the forward changed.
    Returns whether the base is compressed in ``epoch``."""
    cfg, cohort = t.cfg, t.cohort
    was_compressed = quant.is_compressed(cohort.members[0])
    compressed = quant.set_compression(cohort.members[0], cfg.quant, epoch, cohort.layers,
                                       cohort.scales)
    t.strategy.set_compressed(compressed)
    if t.world.active and (cohort.parallel is None or compressed != was_compressed):
        cohort.parallel = None  # the old wrapper's hooks go before the new one's are set
        cohort.parallel = t.world.parallel(cohort.members, cohort.device)
    if compressed and epoch == cfg.quant.start_epoch and cfg.quant.lr_at_switch and not mid_epoch:
        for group in cohort.optimizer.param_groups:  # StepLR decays on from here
            group["lr"] = cfg.quant.lr_at_switch
    return compressed


def run_epoch(t: Trainer, epoch: int, state: dict | None = None) -> dict:
    """Epoch ``epoch`` of the paper's procedure: the compression switch (``_switch``), a pass
    over the training set, the schedule, validation (every ``train.val_every`` epochs and at
    the last), the record and a checkpoint to the sink. Returns the record
    (``metrics.Results``)."""
    cfg, cohort = t.cfg, t.cohort
    compressed = _switch(t, epoch, state is not None and state["step"] > 0)
    t0 = time.perf_counter()
    stats = train_one_epoch(t, epoch, state)
    if stats is None:  # stopped: a mid-epoch checkpoint was written
        raise Interrupted
    record = metrics.Results(epoch=epoch, lr=cohort.optimizer.param_groups[0]["lr"],
                             compressed=compressed, **stats,
                             epoch_time_s=round(time.perf_counter() - t0, 2))
    if cfg.train.lr_step_unit == "epoch":
        cohort.scheduler.step()
    if t.world.writer:
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
            record.update(validate(t))
        t.sink.log(record)
        t.sink.save(cohort, epoch + 1)
        tqdm.write(summary_line(record))
    return record


def train(t: Trainer, first: int, state: dict | None = None,
          on_epoch_end: Callable[[dict], bool | None] | None = None) -> tuple[dict, bool]:
    """Epochs ``first`` to ``train.epochs - 1`` (the first from ``state`` when resuming).
    ``on_epoch_end(record)`` sees every epoch's record once it is logged and checkpointed; a
    true return stops there. Returns the last record and whether every epoch was trained."""
    record = {}
    for epoch in range(first, t.cfg.train.epochs):
        record = run_epoch(t, epoch, state if epoch == first else None)
        stop = on_epoch_end is not None and t.world.writer and bool(on_epoch_end(record))
        if t.world.any(stop, t.cohort.device) and epoch + 1 < t.cfg.train.epochs:
            return record, False
    return record, True
