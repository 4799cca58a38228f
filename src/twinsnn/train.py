"""The training loop: one code path for every strategy, model, data source and device.

``train_step`` updates every member of a cohort on one batch; ``train_one_epoch`` makes one
pass over the training feed; ``run_epoch`` is an epoch of the paper's procedure (compression
switched on at ``quant.start_epoch``, section 4.2; validation; a checkpoint); ``train`` runs
the epochs. All randomness of epoch ``e`` (data order, augmentation, dropout) is drawn from
generators seeded by ``(seed, e)``, so a resumed run continues bitwise. Started by
``torchrun``, every process trains on its slice of each batch (``distributed``); rank 0
alone validates and writes. What a run is made of (model factory, data, run folder) is put
together by ``api.fit``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from . import quant
from .cohort import Cohort, check_outputs, derive_seed
from .config import Config
from .distributed import World
from .errors import ConfigError, Interrupted
from .inference import evaluate
from .files import first_line
from .run import RunFolder, StopSignal, checkpoint_state
from .strategies import Strategy
from .sums import accumulate, epoch_stats, new_sums, sum_over_ranks, to_device


def train_step(cohort: Cohort, strategy: Strategy, x: torch.Tensor, y: torch.Tensor,
               share: float | None = None):
    """One update of every member on the batch ``(x, y)``: forward, the strategy's loss,
    backward, Adam (``share``: this rank's part of a data-parallel batch, see ``losses``).
    Returns ``(loss, parts, outputs)``; raises ``FloatingPointError`` when the update
    overflows. Nothing here waits for the device after the run's first batch (whose outputs
    are checked against the labels): whether the loss is finite is the caller's to check
    (``train_one_epoch`` does every ``LOSS_CHECK_EVERY`` steps)."""
    outputs = cohort.outputs(x)
    if not cohort.checked:
        check_outputs(outputs, y)
        cohort.checked = True
    loss, parts = strategy.loss(outputs, y, share)
    cohort.optimizer.zero_grad(set_to_none=True)
    cohort.backward(loss)
    try:
        cohort.optimizer.step()
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # the update overflows float32 (an absurd train.lr)
        raise FloatingPointError(f"the optimizer step failed ({first_line(e)})") from None
    return loss, parts, outputs


@dataclass
class Training:
    """What the loop works on: the config, the cohort and its strategy, the feeds of the
    ``train`` split and of the evaluated ones (``evals``: ``{"val": feed, "test": feed}``),
    the run folder and the stop flag, and ``step``, which updates the cohort on a batch
    (``train_step`` or its CUDA graph)."""

    cfg: Config
    cohort: Cohort
    strategy: Strategy
    train: object
    evals: dict
    run: RunFolder
    stop: StopSignal
    step: Callable
    progress: bool = True
    world: World = field(default_factory=World)


LOSS_CHECK_EVERY = 50  # steps between the device-to-host reads of the loss check
SHOW_EVERY_ON_CPU = 10  # steps between progress bar figures; elsewhere at the loss check


def _check_loss(t: Training, first_bad: torch.Tensor, epoch: int, step: int) -> None:
    """Stop (on every rank) if a step's loss was not finite: ``first_bad`` is this rank's
    first such step of the epoch, -1 if none; ``step`` the current one."""
    bad = int(first_bad)
    if t.world.any(bad >= 0, first_bad.device):
        raise t.run.fault("loss is not finite", epoch, bad if bad >= 0 else step)


def _check_weights(t: Training, epoch: int, step: int) -> None:
    """Before a checkpoint is written: every weight and statistic is finite (a finite loss
    does not prove it of the weights the last step produced)."""
    for member in t.cohort.members:
        for value in member.state_dict().values():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise t.run.fault("the weights are not finite", epoch, step)


def train_one_epoch(t: Training, epoch: int, state: dict | None = None) -> dict | None:
    """One pass over the training feed in the order, augmentation and dropout of
    ``(seed, epoch)``, from ``state``'s step when that is a mid-epoch checkpoint. Returns the
    epoch's training statistics, or None after writing a mid-epoch checkpoint when stopped."""
    cfg, cohort, device, world = t.cfg, t.cohort, t.cohort.device, t.world
    for member in cohort.members:
        member.train()
    n, bs, seed = len(t.train), cfg.train.batch_size, cfg.train.seed
    steps = t.train.steps(bs)
    if t.train.smallest_batch(bs) < world.size:
        raise ConfigError(f"a batch of the {n} training samples is smaller than the "
                          f"{world.size} processes; lower the number of processes or raise "
                          "train.batch_size")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(
        derive_seed(seed, epoch, "order")))
    aug = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, "aug"))
    torch.manual_seed(derive_seed(seed, epoch, "dropout"))
    first_step, sums = 0, new_sums(len(cohort.members), device)
    if state is not None and state["step"]:
        first_step = state["step"]
        if world.writer:  # the sums of all ranks so far; the others start from zero
            sums = to_device(state["sums"], device)
        torch.set_rng_state(state["rng"]["torch"])
        aug.set_state(state["rng"]["aug"])
    batches = t.train.epoch(order, bs, aug, first_step, derive_seed(seed, epoch, "loader"))
    bar = tqdm(total=steps, initial=first_step, disable=not t.progress, desc=f"epoch {epoch}",
               unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)
    t0, seen0 = time.perf_counter(), sums["seen"]
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    # the figures read the device: elsewhere than on the CPU only right after the loss check
    show_every = SHOW_EVERY_ON_CPU if device.type == "cpu" else LOSS_CHECK_EVERY
    step = first_step - 1
    for step, (x, y) in enumerate(batches, start=first_step):
        batch, share = len(y), None
        if world.active:
            x, y, share = world.shard(cohort.members, x, y)
        try:
            loss, parts, outputs = t.step(x, y, share)
        except FloatingPointError as e:
            raise t.run.fault(str(e), epoch, step) from None
        if cfg.train.lr_step_unit == "batch":
            cohort.scheduler.step()
        accumulate(sums, loss, parts, outputs, y, batch)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step,
                                first_bad)
        if step % LOSS_CHECK_EVERY == LOSS_CHECK_EVERY - 1:
            _check_loss(t, first_bad, epoch, step)
        bar.update()
        if t.progress and ((step + 1) % show_every == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{sums['loss'].item() / sums['seen']:.3f}",
                            acc=f"{sums['correct'][0].item() / sums['seen']:.3f}",
                            samples_s=f"{(sums['seen'] - seen0) / (time.perf_counter() - t0):.0f}")
        if world.any(t.stop.requested, device) and step + 1 < steps:
            _check_loss(t, first_bad, epoch, step)
            _check_weights(t, epoch, step)
            rng = {"torch": torch.get_rng_state(), "aug": aug.get_state()}
            t.run.save(checkpoint_state(cfg, cohort, epoch, step + 1, rng,
                                        sum_over_ranks(sums, world)))
            bar.close()
            return None
    bar.close()
    _check_loss(t, first_bad, epoch, step)
    _check_weights(t, epoch, step)
    return epoch_stats(sum_over_ranks(sums, world), seen0, time.perf_counter() - t0)


def validate(t: Training) -> dict:
    """Accuracy and loss of every member on each evaluated split (validation, and with
    ``train.eval_test`` test); firing rates of the base on validation."""
    out = {}
    for split, feed in t.evals.items():
        if feed is None or len(feed) == 0:
            continue
        for i, member in enumerate(t.cohort.members):
            result = evaluate(member, feed, t.cfg.train.eval_batch_size, t.cohort.reset)
            out[f"{split}_acc/{i}"] = result["acc"]
            out[f"{split}_loss/{i}"] = result["loss"]
            if i == 0 and split == "val":
                out["firing_rates"] = result["rates"]
    return out


def summary_line(record: dict) -> str:
    keys = ["train_loss", "train_acc/0", "val_acc/0", "test_acc/0", "lr", "epoch_time_s"]
    shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
    return f"epoch {record['epoch']}: {shown}"


def run_epoch(t: Training, epoch: int, state: dict | None = None) -> dict:
    """Epoch ``epoch`` of the paper's procedure: compression on from ``quant.start_epoch``
    (with ``quant.lr_at_switch`` set there, and the strategy told so), a pass
    over the training set, the schedule, validation (every ``train.val_every`` epochs and at
    the last), a metrics line and a checkpoint. Returns the metrics record."""
    cfg, cohort = t.cfg, t.cohort
    was_compressed = quant.is_compressed(cohort.members[0])
    compressed = quant.set_compression(cohort.members[0], cfg.quant, epoch, cohort.layers,
                                       cohort.scales)
    t.strategy.set_compressed(compressed)
    if t.world.active and (cohort.parallel is None or compressed != was_compressed):
        cohort.parallel = None  # the old wrapper's hooks go before the new one's are set
        cohort.parallel = t.world.parallel(cohort.members, cohort.device)
    mid_epoch = state is not None and state["step"] > 0
    if compressed and epoch == cfg.quant.start_epoch and cfg.quant.lr_at_switch and not mid_epoch:
        for group in cohort.optimizer.param_groups:  # StepLR decays on from here
            group["lr"] = cfg.quant.lr_at_switch
    t0 = time.perf_counter()
    stats = train_one_epoch(t, epoch, state)
    if stats is None:  # stopped: a mid-epoch checkpoint was written
        raise Interrupted
    record = {"epoch": epoch, "lr": cohort.optimizer.param_groups[0]["lr"],
              "compressed": compressed, **stats,
              "epoch_time_s": round(time.perf_counter() - t0, 2)}
    if cfg.train.lr_step_unit == "epoch":
        cohort.scheduler.step()
    if t.run.writer:
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
            record.update(validate(t))
        t.run.log(record)
        t.run.save(checkpoint_state(cfg, cohort, epoch + 1))
        tqdm.write(summary_line(record))
    return record


def train(t: Training, first: int, state: dict | None = None,
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
