"""The training loop: one code path for every strategy, data set and device.

``train_step`` updates every member of a cohort on one batch; ``train_one_epoch`` makes one
pass over the training set; ``fit`` trains for ``train.epochs`` with compression switched on
at ``quant.start_epoch`` (paper section 4.2), validating every member and checkpointing after
each epoch. All randomness of epoch ``e`` (data order, augmentation, dropout) is drawn from
generators seeded by ``(seed, e)``, so a resumed run continues bitwise. The run folder
(``run.json``, metrics, checkpoints) is ``run.RunFolder``. Started by ``torchrun``, every
process trains on its slice of each batch (``distributed``); rank 0 alone validates and
writes.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import quant
from .checkpoint import first_line
from .cohort import Cohort, build_cohort, derive_seed
from .config import Config
from .data import DataSplits, Dataset, build_data
from .data.transforms import Preprocess
from .distributed import World, join, leave, synchronize_batchnorm
from .errors import ConfigError, Interrupted
from .evaluate import evaluate
from .graphs import GraphedStep
from .losses import Strategy, alpha_at, strategy_from_config
from .run import RunFolder, StopSignal, checkpoint_state
from .runtime import configure, resolve_device


def train_step(cohort: Cohort, strategy: Strategy, x: torch.Tensor, y: torch.Tensor,
               share: float | None = None):
    """One update of every member on the batch ``(x, y)``: forward, the strategy's loss,
    backward, Adam (``share``: this rank's part of a data-parallel batch, see ``losses``).
    Returns ``(loss, parts, outputs)``; raises ``FloatingPointError`` when the update
    overflows. Nothing here waits for the device: whether the loss is finite is the caller's
    to check (``train_one_epoch`` does every ``LOSS_CHECK_EVERY`` steps)."""
    outputs = cohort.outputs(x)
    loss, parts = strategy(outputs, y, share)
    cohort.optimizer.zero_grad(set_to_none=True)
    cohort.backward(loss)
    try:
        cohort.optimizer.step()
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # the update overflows float32 (an absurd train.lr)
        raise FloatingPointError(f"the optimizer step failed ({first_line(e)})") from None
    return loss, parts, outputs


def make_step(cohort: Cohort, strategy: Strategy, train_cfg, world: World = World()) -> Callable:
    """``train_step`` bound to ``cohort`` and ``strategy``, called ``step(x, y, share)``; with
    ``train.cuda_graphs`` on a CUDA device in one process, replayed from a CUDA graph
    (``graphs.GraphedStep``)."""
    step = functools.partial(train_step, cohort, strategy)
    device = next(cohort.members[0].parameters()).device
    if train_cfg.cuda_graphs and device.type == "cuda" and not world.active:
        return GraphedStep(step, cohort, train_cfg.batch_size)
    return step


@dataclass
class Training:
    """What the loop works on: the config, the cohort and its strategy, the data (``train``:
    the training split on the device) and how it is fed, the run folder and the stop flag;
    ``step`` updates the cohort on a batch (``make_step`` unless given)."""

    cfg: Config
    cohort: Cohort
    strategy: Strategy
    data: DataSplits
    train: Dataset
    preprocess: Preprocess
    run: RunFolder
    stop: StopSignal
    progress: bool = True
    world: World = World()
    step: Callable | None = None

    def __post_init__(self):
        if self.step is None:
            self.step = make_step(self.cohort, self.strategy, self.cfg.train, self.world)


def _new_sums(members: int, device) -> dict:
    return {"loss": torch.zeros((), device=device), "seen": 0,
            "correct": torch.zeros(members, device=device),
            "agree": torch.zeros((), device=device), "parts": {}}


def _to_device(tree, device):
    if torch.is_tensor(tree):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


@torch.no_grad()
def _accumulate(sums: dict, loss, parts: dict, outputs: list, y: torch.Tensor,
                batch: int) -> None:
    """Add one batch to the epoch's sums: loss and loss parts (of the whole batch of size
    ``batch``, or this rank's share of it), correct predictions of every member and base-twin
    agreement on ``y``."""
    k = len(sums["correct"])
    preds = [o.sum(0).argmax(1) if o.dim() == 3 else o.argmax(1) for o in outputs[:k]]
    sums["loss"] += loss.detach() * batch
    sums["correct"] += torch.stack([(p == y).sum() for p in preds]).float()
    if k > 1:
        sums["agree"] += (preds[0] == preds[1]).sum()
    for name, value in parts.items():
        sums["parts"][name] = sums["parts"].get(name, 0) + value.detach() * batch
    sums["seen"] += len(y)


def _sum_over_ranks(sums: dict, world: World) -> dict:
    """The epoch's sums of all ranks (``sums`` itself in one process)."""
    if not world.active:
        return sums
    names = list(sums["parts"])
    flat = world.sum(torch.cat([sums["loss"].view(1), sums["agree"].view(1), sums["correct"],
                                torch.stack([sums["parts"][k] for k in names]).view(-1),
                                sums["loss"].new_tensor([sums["seen"]])]))
    k = len(sums["correct"])
    return {"loss": flat[0], "agree": flat[1], "correct": flat[2:2 + k],
            "parts": dict(zip(names, flat[2 + k:-1])), "seen": int(flat[-1].item())}


def _epoch_stats(sums: dict, seen0: int, seconds: float) -> dict:
    seen, k = sums["seen"], len(sums["correct"])
    stats = {"train_loss": sums["loss"].item() / seen,
             **{f"train_acc/{i}": sums["correct"][i].item() / seen for i in range(k)},
             **{f"train_{name}": v.item() / seen for name, v in sums["parts"].items()},
             "samples_per_s": round((seen - seen0) / seconds, 1)}
    if k > 1:
        stats["train_agreement"] = sums["agree"].item() / seen
    return stats


LOSS_CHECK_EVERY = 50  # steps between the device-to-host reads of the loss check
SHOW_EVERY_ON_CPU = 10  # steps between progress bar figures; elsewhere at the loss check


def _check_loss(t: Training, first_bad: torch.Tensor, epoch: int, step: int) -> None:
    """Stop (on every rank) if a step's loss was not finite: ``first_bad`` is this rank's
    first such step of the epoch, -1 if none; ``step`` the current one."""
    bad = int(first_bad)
    if t.world.any(bad >= 0, t.train.x.device):
        raise t.run.fault("loss is not finite", epoch, bad if bad >= 0 else step)


def _check_weights(t: Training, epoch: int, step: int) -> None:
    """Before a checkpoint is written: every weight and statistic is finite (a finite loss
    does not prove it of the weights the last step produced)."""
    for member in t.cohort.members:
        for value in member.state_dict().values():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise t.run.fault("the weights are not finite", epoch, step)


def train_one_epoch(t: Training, epoch: int, state: dict | None = None) -> dict | None:
    """One pass over the training set in the order, augmentation and dropout of
    ``(seed, epoch)``, from ``state``'s step when that is a mid-epoch checkpoint. Returns the
    epoch's training statistics, or None after writing a mid-epoch checkpoint when stopped."""
    cfg, cohort, device, world = t.cfg, t.cohort, t.train.x.device, t.world
    for member in cohort.members:
        member.train()
    n, bs, seed = len(t.train), cfg.train.batch_size, cfg.train.seed
    if min(bs, n - (math.ceil(n / bs) - 1) * bs) < world.size:
        raise ConfigError(f"a batch of the {n} training samples is smaller than the "
                          f"{world.size} processes; lower the number of processes or raise "
                          "train.batch_size")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(
        derive_seed(seed, epoch, "order"))).to(device)
    aug = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, "aug"))
    torch.manual_seed(derive_seed(seed, epoch, "dropout"))
    first_step, sums = 0, _new_sums(len(cohort.members), device)
    if state is not None and state["step"]:
        first_step = state["step"]
        if world.writer:  # the sums of all ranks so far; the others start from zero
            sums = _to_device(state["sums"], device)
        torch.set_rng_state(state["rng"]["torch"])
        aug.set_state(state["rng"]["aug"])
    steps = math.ceil(n / bs)
    bar = tqdm(range(first_step, steps), initial=first_step, total=steps, disable=not t.progress,
               desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True,
               mininterval=1.0)
    t0, seen0 = time.perf_counter(), sums["seen"]
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    # the figures read the device: elsewhere than on the CPU only right after the loss check
    show_every = SHOW_EVERY_ON_CPU if device.type == "cpu" else LOSS_CHECK_EVERY
    for step in bar:
        index = order[step * bs:(step + 1) * bs]
        x, y = t.preprocess(t.train.x[index], aug), t.train.y[index]
        batch, share = len(y), None
        if world.active:
            x, y, share = world.shard(cohort.members, x, y)
        try:
            loss, parts, outputs = t.step(x, y, share)
        except FloatingPointError as e:
            raise t.run.fault(str(e), epoch, step) from None
        if cfg.train.lr_step_unit == "batch":
            cohort.scheduler.step()
        _accumulate(sums, loss, parts, outputs, y, batch)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step,
                                first_bad)
        if step % LOSS_CHECK_EVERY == LOSS_CHECK_EVERY - 1:
            _check_loss(t, first_bad, epoch, step)
        if t.progress and ((step + 1) % show_every == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{sums['loss'].item() / sums['seen']:.3f}",
                            acc=f"{sums['correct'][0].item() / sums['seen']:.3f}",
                            samples_s=f"{(sums['seen'] - seen0) / (time.perf_counter() - t0):.0f}")
        if world.any(t.stop.requested, device) and step + 1 < steps:
            _check_loss(t, first_bad, epoch, step)
            _check_weights(t, epoch, step)
            rng = {"torch": torch.get_rng_state(), "aug": aug.get_state()}
            t.run.save(checkpoint_state(cfg, cohort, epoch, step + 1, rng,
                                        _sum_over_ranks(sums, world)))
            bar.close()
            return None
    bar.close()
    _check_loss(t, first_bad, epoch, steps - 1)
    _check_weights(t, epoch, steps - 1)
    return _epoch_stats(_sum_over_ranks(sums, world), seen0, time.perf_counter() - t0)


def validate(t: Training) -> dict:
    """Validation (and, with ``train.eval_test``, test) accuracy and loss of every member;
    firing rates of the base."""
    out, cfg, data = {}, t.cfg, t.data
    splits = [("val", data.val)] + ([("test", data.test)] if cfg.train.eval_test else [])
    for split, dataset in splits:
        if len(dataset) == 0:
            continue
        for i, member in enumerate(t.cohort.members):
            result = evaluate(member, dataset, t.preprocess, cfg.train.eval_batch_size,
                              t.train.x.device, data.num_classes)
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
    (with ``quant.lr_at_switch`` set there, and ``loss.alpha_compressed`` from there), a pass over the training set, the schedule,
    validation (every ``train.val_every`` epochs and at the last), a metrics line and a
    checkpoint. Returns the metrics record."""
    cfg, cohort = t.cfg, t.cohort
    was_compressed = quant.is_compressed(cohort.members[0])
    compressed = quant.set_compression(cohort.members[0], cfg.quant, epoch)
    t.strategy.alpha = alpha_at(cfg.loss, compressed)
    if t.world.active and (cohort.parallel is None or compressed != was_compressed):
        cohort.parallel = None  # the old wrapper's hooks go before the new one's are set
        cohort.parallel = t.world.parallel(cohort.members, t.train.x.device)
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


def fit(cfg: Config, resume: bool = False, progress: bool = True,
        branch_from: Path | None = None,
        on_epoch_end: Callable[[dict], bool | None] | None = None) -> dict:
    """Train as ``cfg`` says; returns the last epoch's metrics record. ``resume``: continue the
    run in its folder; ``branch_from``: start from another run's end-of-epoch checkpoint (see
    ``run.check_branch``), e.g. to compress a full-precision run at its ``quant.start_epoch``
    without training that phase again. ``on_epoch_end(record)`` sees every epoch's record once
    it is logged and checkpointed; a true return stops the run there (resume it later with
    ``resume=True``; ``model.safetensors`` is written only by a run that trained every epoch).
    Callable from any thread; SIGINT/SIGTERM stop it cleanly when called in the main thread.
    In a process started by ``torchrun`` it trains data-parallel (``distributed``); the
    callback then runs on rank 0 and its answer holds for all ranks."""
    world = join(resolve_device(cfg.train.device))
    run, cohort = RunFolder(cfg, world.writer), None
    try:
        source = world.agree(run.check, resume, branch_from)
        device, deterministic = configure(cfg.train)
        device = world.device(device)
        strategy = strategy_from_config(cfg.loss)
        data = build_data(cfg.data, cfg.model.timesteps)
        cohort = build_cohort(cfg, data, strategy, device)
        t = Training(cfg, cohort, strategy, data, Dataset(data.train.x.to(device),
                     data.train.y.to(device)), Preprocess(data, cfg.data.augment,
                     cfg.train.channels_last), run, StopSignal(), progress and world.writer,
                     world)
        # the handler is in place before run.json exists: a run that shows up can be stopped
        # cleanly at any moment
        with t.stop:
            state = run.resume(cohort) if resume else None
            first = state["epoch"] if resume else run.start(cohort, data, deterministic, source,
                                                            world.size)
            if world.active and cfg.train.sync_batchnorm:
                synchronize_batchnorm(cohort.members, device)
            record = {}
            for epoch in range(first, cfg.train.epochs):
                record = run_epoch(t, epoch, state if epoch == first else None)
                stop = on_epoch_end is not None and world.writer and bool(on_epoch_end(record))
                if world.any(stop, device) and epoch + 1 < cfg.train.epochs:
                    return record
        run.finish(cohort.members[0], cohort.meta)
        return record
    finally:
        run.release()
        leave(world, cohort)
