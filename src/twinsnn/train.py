"""The training loop: one code path for every strategy, data set and device.

``fit(cfg)`` trains the cohort a config describes, writes ``run.json`` (config, seeds,
versions, machine), one ``metrics.jsonl`` line per epoch, ``checkpoint.pt`` after every
epoch (or when interrupted), and ``model.safetensors`` (the base network) at the end.
All randomness of epoch ``e`` (data order, augmentation, dropout) is drawn from generators
seeded by ``(seed, e)`` and saved in the checkpoint, so a resumed run continues bitwise.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, quant
from .analysis import firing_rates
from .checkpoint import (first_line, load_checkpoint, load_model, save_checkpoint, save_model,
                         weights_epoch)
from .config import Config, from_flat, to_dict, to_flat
from .data import DataSplits, Dataset, build_data, dataset_module
from .data.transforms import AUGMENTATIONS, normalize, to_unit
from .errors import CheckpointError, ConfigError, Interrupted, TwinsnnError
from .losses import Strategy, strategy_from_config
from .models import build_model
from .neurons import use_compiled_kernels


class TrainingError(TwinsnnError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across machines and Python versions."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def member_seed(seed: int, member: int) -> int:
    """Member 0 (the base) uses ``seed`` itself; each twin its own independent seed."""
    return seed if member == 0 else derive_seed(seed, "member", member)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use --device cpu")
    return torch.device(name)


class Preprocess:
    """uint8 samples -> normalized float model input; augments when given a generator.
    Frames ``[B, T, C, H, W]`` leave time-major ``[T, B, C, H, W]``."""

    def __init__(self, data: DataSplits, augment: bool, channels_last: bool = False):
        source = dataset_module(data.name)
        self.mean, self.std = data.mean, data.std
        self.augmentation = AUGMENTATIONS[source.AUGMENTATION] if augment else None
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        x = to_unit(x)
        if generator is not None and self.augmentation is not None:
            x = self.augmentation(x, generator)
        x = normalize(x, self.mean, self.std)
        if x.dim() == 5:
            return x.transpose(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def model_kwargs(cfg: Config, data: DataSplits) -> dict:
    m = cfg.model
    return dict(arch=m.arch, num_classes=data.num_classes, in_channels=data.in_channels,
                image_size=list(data.image_size), width=m.width, timesteps=m.timesteps,
                dropout=m.dropout, fc_norm=m.fc_norm, decay=m.decay, threshold=m.threshold,
                readout_decay=m.readout_decay)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, preprocess: Preprocess, batch_size: int,
             device: torch.device, num_classes: int) -> dict:
    """Accuracy, mean CE, confusion matrix ``[true, predicted]`` and firing rates."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    with firing_rates(model) as rates:
        for start in range(0, len(data), batch_size):
            x = preprocess(data.x[start:start + batch_size].to(device))
            y = data.y[start:start + batch_size].to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                        minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train(was_training)
    n = max(len(data), 1)
    return {"acc": confusion.diag().sum().item() / n, "loss": loss_sum.item() / n,
            "confusion": confusion.cpu().tolist(), "rates": rates}


@dataclass
class Cohort:
    """The networks being trained (base first), an optional frozen teacher, and their
    optimizer and schedule."""

    members: list
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    seeds: list
    meta: dict  # how to rebuild and feed the base: model kwargs, data normalization, config

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [m.potentials(x) for m in self.members]
        if self.teacher is not None:
            with torch.no_grad():
                outs.append(self.teacher.potentials(x))
        return outs


def memory_format(cfg: Config) -> torch.memory_format:
    """channels-last (NHWC) convolutions are faster on CPU for these layer sizes."""
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def build_cohort(cfg: Config, data: DataSplits, strategy: Strategy, device) -> Cohort:
    kwargs = model_kwargs(cfg, data)
    seeds = [member_seed(cfg.train.seed, i) for i in range(strategy.trainable)]
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(build_model(**kwargs).to(device, memory_format=memory_format(cfg)))
    teacher = None
    if strategy.uses_teacher:
        teacher, meta = load_model(Path(cfg.loss.teacher))
        if meta["model"] != kwargs:
            raise ConfigError(f"teacher {cfg.loss.teacher} is a different network "
                              f"({meta['model']}) than the student ({kwargs})")
        teacher = teacher.to(device, memory_format=memory_format(cfg)).requires_grad_(False)
    params = [p for m in members for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.train.lr_step_size,
                                                cfg.train.lr_gamma)
    meta = {"model": kwargs, "data": {"name": data.name, "mean": list(data.mean),
                                      "std": list(data.std)}, "config": to_flat(cfg)}
    return Cohort(members, teacher, optimizer, scheduler, seeds, meta)


class _Interrupt:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame):
        self.requested = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def code_version() -> dict:
    """The git commit of the twinsnn sources and whether their tree had uncommitted changes
    (``None`` for both when they are not in a git checkout, e.g. an installed wheel)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise TwinsnnError(f"cannot write to run folder {run_dir} ({e.strerror}); "
                           "choose another --out-dir") from None


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _metrics_before(path: Path, epochs_done: int) -> str:
    """The lines of ``metrics.jsonl`` for epochs ``< epochs_done`` ("" if there is none)."""
    if not path.exists():
        return ""
    return "".join(l + "\n" for l in path.read_text().splitlines()
                   if l.strip() and json.loads(l)["epoch"] < epochs_done)


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop lines of epochs the checkpoint does not cover (written before a crash)."""
    if path.exists():
        path.write_text(_metrics_before(path, epochs_done))


# Keys that may differ between a run and the run it branches from: they do not shape the
# epochs already trained (quant.* only while neither run compresses before the branch point).
BRANCH_FREE_KEYS = ("name", "out_dir", "data.dir", "train.epochs", "train.eval_test",
                    "train.eval_batch_size")


def check_branch(state: dict, cfg: Config, source: Path) -> None:
    """Raise ``ConfigError`` unless training ``cfg`` from ``state`` (an end-of-epoch
    checkpoint) gives bitwise the run ``cfg`` would give from scratch: the configs agree on
    everything that shaped the epochs done, and ``cfg`` has epochs left."""
    done, theirs, ours = state["epoch"], state["config"], to_flat(cfg)
    if state.get("step", 0) != 0:
        raise ConfigError(f"{source} was written mid-epoch; branch from the end of an epoch "
                          "(resume that run first)")
    if done >= cfg.train.epochs:
        raise ConfigError(f"{source} has {done} epochs done; the config trains "
                          f"{cfg.train.epochs}: raise train.epochs to branch from it")
    quant_same = all(theirs.get(k) == v for k, v in ours.items() if k.startswith("quant."))
    compressed = (quant.compression_on(c.quant, done - 1) for c in (from_flat(theirs), cfg))
    if not quant_same and any(compressed):
        raise ConfigError(f"{source} and the config differ in quant.* before epoch {done}; "
                          "branch from a checkpoint written before compression starts")
    differ = sorted(k for k in set(ours) | set(theirs) if theirs.get(k) != ours.get(k)
                    and k not in BRANCH_FREE_KEYS and not k.startswith("quant."))
    if differ:
        raise ConfigError(f"{source} was trained with other values of {', '.join(differ)}; "
                          "a branch may change only quant.*, train.epochs and where it writes")


def _restore(cohort: Cohort, state: dict, cfg: Config, path: Path) -> None:
    """Load every member, the optimizer and the schedule of a checkpoint into ``cohort``."""
    quant.set_compression(cohort.members[0], cfg.quant, weights_epoch(state))
    if len(state["members"]) != len(cohort.members):
        raise CheckpointError(f"{path} holds {len(state['members'])} members; "
                              f"the config trains {len(cohort.members)}")
    try:
        for member, member_state in zip(cohort.members, state["members"]):
            member.load_state_dict(member_state)
        cohort.optimizer.load_state_dict(state["optimizer"])
        cohort.scheduler.load_state_dict(state["scheduler"])
    except Exception as e:  # a damaged or tampered checkpoint
        raise CheckpointError(f"{path}: cannot restore the run from it "
                              f"({first_line(e)})") from None


def _resume(cohort: Cohort, state: dict, cfg: Config, ckpt_path: Path) -> None:
    """Continue the run of ``ckpt_path``: same config, its state, its metrics up to there."""
    if state["config"] != to_flat(cfg):
        raise ConfigError(f"{ckpt_path} was written by a different config; resume with "
                          "the same preset and --set values")
    _restore(cohort, state, cfg, ckpt_path)
    _truncate_metrics(ckpt_path.parent / "metrics.jsonl", state["epoch"])


def _start(cfg: Config, cohort: Cohort, data: DataSplits, device, deterministic: bool,
           source: dict | None, branch_from: Path | None) -> int:
    """Write a new run's ``run.json`` and ``metrics.jsonl`` (the source's epochs when
    branching, after restoring its state); returns the first epoch to train."""
    run_dir = Path(cfg.out_dir) / cfg.name
    run_info = {"config": to_dict(cfg), "member_seeds": cohort.seeds,
                "data_split": data.split, "twinsnn_version": __version__,
                "code": code_version(), "torch_version": torch.__version__,
                "deterministic": deterministic, "machine": machine_info(device),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    start_epoch, metrics = 0, ""
    if source is not None:
        _restore(cohort, source, cfg, branch_from)
        start_epoch = source["epoch"]
        run_info["branched_from"] = {"checkpoint": str(branch_from),
                                     "epochs_done": start_epoch,
                                     "name": source["config"]["name"]}
        metrics = _metrics_before(branch_from.parent / "metrics.jsonl", start_epoch)
    (run_dir / "metrics.jsonl").write_text(metrics)
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    return start_epoch


def fit(cfg: Config, resume: bool = False, progress: bool = True,
        branch_from: Path | None = None) -> dict:
    """Train as ``cfg`` says; returns the last epoch's metrics record. ``branch_from``: start
    from another run's end-of-epoch checkpoint (see ``check_branch``), e.g. to compress a
    full-precision run at its ``quant.start_epoch`` without training that phase again."""
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and branch_from:
        raise ConfigError("--resume continues a run in its own folder; --branch-from starts a "
                          "new one: pass only one")
    if resume and not ckpt_path.exists():
        raise TwinsnnError(f"nothing to resume: {ckpt_path} does not exist")
    if not resume and ckpt_path.exists():
        raise TwinsnnError(f"{run_dir} already holds a run; pass --resume to continue it "
                           "or --name to start another")
    source = None
    if branch_from:
        branch_from = Path(branch_from)
        source = load_checkpoint(branch_from)
        check_branch(source, cfg, branch_from)
    _check_writable(run_dir)
    device = resolve_device(cfg.train.device)
    deterministic = cfg.train.deterministic
    if deterministic is None:
        deterministic = device.type == "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type == "cuda")
    use_compiled_kernels(cfg.train.compile)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic

    strategy = strategy_from_config(cfg.loss)
    data = build_data(cfg.data, cfg.model.timesteps)
    cohort = build_cohort(cfg, data, strategy, device)
    preprocess = Preprocess(data, cfg.data.augment, cfg.train.channels_last)
    train_x, train_y = data.train.x.to(device), data.train.y.to(device)

    # the handler is in place before run.json exists: a run that shows up can be stopped
    # cleanly at any moment
    with _Interrupt() as interrupt:
        if resume:
            resume_state = load_checkpoint(ckpt_path)
            _resume(cohort, resume_state, cfg, ckpt_path)
            start_epoch = resume_state["epoch"]
        else:
            resume_state = None
            start_epoch = _start(cfg, cohort, data, device, deterministic, source, branch_from)
        record = {}
        for epoch in range(start_epoch, cfg.train.epochs):
            compressed = quant.set_compression(cohort.members[0], cfg.quant, epoch)
            state = resume_state if resume_state and resume_state["epoch"] == epoch else None
            resume_state = None
            mid_epoch = state is not None and state["step"] > 0
            if compressed and epoch == cfg.quant.start_epoch and cfg.quant.lr_at_switch and not mid_epoch:
                for group in cohort.optimizer.param_groups:  # StepLR decays on from here
                    group["lr"] = cfg.quant.lr_at_switch
            t0 = time.perf_counter()
            stats = train_one_epoch(cfg, cohort, strategy, preprocess, train_x, train_y,
                                    epoch, device, state, interrupt, ckpt_path, progress)
            if stats is None:  # interrupted: a mid-epoch checkpoint was written
                raise Interrupted
            record = {"epoch": epoch, "lr": cohort.optimizer.param_groups[0]["lr"],
                      "compressed": compressed, **stats,
                      "epoch_time_s": round(time.perf_counter() - t0, 2)}
            if cfg.train.lr_step_unit == "epoch":
                cohort.scheduler.step()
            record.update(evaluate_cohort(cfg, cohort, data, preprocess, device))
            _append_metrics(run_dir / "metrics.jsonl", record)
            save_checkpoint(ckpt_path, checkpoint_state(cfg, cohort, epoch + 1))
            tqdm.write(summary_line(record))
    base = cohort.members[0]
    save_model(run_dir / "model.safetensors", quant.baked(base) if quant.is_compressed(base)
               else base, cohort.meta)
    return record


def checkpoint_state(cfg: Config, cohort: Cohort, epoch: int, step: int = 0,
                     rng: dict | None = None, sums: dict | None = None) -> dict:
    """Everything needed to continue: weights of every member, optimizer, schedule, the
    position in the data (``epoch``, ``step``) and, mid-epoch, the RNG states and sums."""
    return {"config": to_flat(cfg), "meta": cohort.meta, "epoch": epoch, "step": step,
            "members": [m.state_dict() for m in cohort.members],
            "optimizer": cohort.optimizer.state_dict(),
            "scheduler": cohort.scheduler.state_dict(), "rng": rng or {}, "sums": sums or {}}


def evaluate_cohort(cfg: Config, cohort: Cohort, data: DataSplits, preprocess, device) -> dict:
    """Validation (and, when asked, test) accuracy of every member; firing rates of the base."""
    out = {}
    splits = [("val", data.val)] + ([("test", data.test)] if cfg.train.eval_test else [])
    for split, dataset in splits:
        if len(dataset) == 0:
            continue
        for i, member in enumerate(cohort.members):
            result = evaluate(member, dataset, preprocess, cfg.train.eval_batch_size, device,
                              data.num_classes)
            out[f"{split}_acc/{i}"] = result["acc"]
            out[f"{split}_loss/{i}"] = result["loss"]
            if i == 0 and split == "val":
                out["firing_rates"] = result["rates"]
    return out


def summary_line(record: dict) -> str:
    keys = ["train_loss", "train_acc/0", "val_acc/0", "test_acc/0", "lr", "epoch_time_s"]
    shown = " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
    return f"epoch {record['epoch']}: {shown}"


def _to_device(tree, device):
    if torch.is_tensor(tree):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


def _numerical_fault(what: str, epoch: int, step: int, ckpt_path: Path) -> TrainingError:
    kept = (f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists()
            else "no checkpoint had been written yet")
    return TrainingError(f"{what} at epoch {epoch} step {step}; {kept} (lower train.lr?)")


def _check_weights(cohort: Cohort, epoch: int, step: int, ckpt_path: Path) -> None:
    """Before a checkpoint is written: every weight and statistic is finite (a finite loss
    does not prove it of the weights the last step produced)."""
    for member in cohort.members:
        for value in member.state_dict().values():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _numerical_fault("the weights are not finite", epoch, step, ckpt_path)


def train_one_epoch(cfg: Config, cohort: Cohort, strategy: Strategy, preprocess: Preprocess,
                    train_x, train_y, epoch: int, device, state: dict | None,
                    interrupt: _Interrupt, ckpt_path: Path, progress: bool) -> dict | None:
    """One pass over the training set; returns the epoch's training statistics, or None
    after writing a mid-epoch checkpoint when interrupted."""
    for member in cohort.members:
        member.train()
    n, bs = len(train_y), cfg.train.batch_size
    order = torch.randperm(n, generator=torch.Generator().manual_seed(
        derive_seed(cfg.train.seed, epoch, "order"))).to(device)
    aug = torch.Generator(device=device).manual_seed(derive_seed(cfg.train.seed, epoch, "aug"))
    torch.manual_seed(derive_seed(cfg.train.seed, epoch, "dropout"))
    k = len(cohort.members)
    sums = {"loss": torch.zeros((), device=device), "seen": 0,
            "correct": torch.zeros(k, device=device), "agree": torch.zeros((), device=device),
            "parts": {}}
    first_step = 0
    if state is not None and state["step"]:
        first_step, sums = state["step"], _to_device(state["sums"], device)
        torch.set_rng_state(state["rng"]["torch"])
        aug.set_state(state["rng"]["aug"])
    steps = math.ceil(n / bs)
    bar = tqdm(range(first_step, steps), initial=first_step, total=steps, disable=not progress,
               desc=f"epoch {epoch}", unit="batch", leave=False, dynamic_ncols=True,
               mininterval=1.0)
    t0, seen0 = time.perf_counter(), sums["seen"]
    for step in bar:
        index = order[step * bs:(step + 1) * bs]
        x = preprocess(train_x[index], aug)
        y = train_y[index]
        with torch.autocast(device.type, torch.bfloat16, cfg.train.precision == "bf16"):
            outputs = cohort.outputs(x)  # potentials in float32 either way
        loss, parts = strategy(outputs, y)
        if not torch.isfinite(loss):
            raise _numerical_fault(f"loss is {loss.item()}", epoch, step, ckpt_path)
        cohort.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            cohort.optimizer.step()
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # the update overflows float32 (an absurd train.lr)
            raise _numerical_fault(f"the optimizer step failed ({first_line(e)})", epoch, step,
                                   ckpt_path) from None
        if cfg.train.lr_step_unit == "batch":
            cohort.scheduler.step()
        with torch.no_grad():
            preds = [o.sum(0).argmax(1) if o.dim() == 3 else o.argmax(1)
                     for o in outputs[:k]]
            sums["loss"] += loss.detach() * len(y)
            sums["correct"] += torch.stack([(p == y).sum() for p in preds]).float()
            if k > 1:
                sums["agree"] += (preds[0] == preds[1]).sum()
            for name, value in parts.items():
                sums["parts"][name] = sums["parts"].get(name, 0) + value.detach() * len(y)
        sums["seen"] += len(y)
        if progress and (step % 10 == 0 or step == steps - 1):
            rate = (sums["seen"] - seen0) / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{sums['loss'].item() / sums['seen']:.3f}",
                            acc=f"{sums['correct'][0].item() / sums['seen']:.3f}",
                            samples_s=f"{rate:.0f}")
        if interrupt.requested and step + 1 < steps:
            _check_weights(cohort, epoch, step, ckpt_path)
            rng = {"torch": torch.get_rng_state(), "aug": aug.get_state()}
            save_checkpoint(ckpt_path, checkpoint_state(cfg, cohort, epoch, step + 1, rng, sums))
            bar.close()
            return None
    bar.close()
    _check_weights(cohort, epoch, steps - 1, ckpt_path)
    seen = sums["seen"]
    stats = {"train_loss": sums["loss"].item() / seen,
             **{f"train_acc/{i}": sums["correct"][i].item() / seen for i in range(k)},
             **{f"train_{name}": v.item() / seen for name, v in sums["parts"].items()},
             "samples_per_s": round((seen - seen0) / (time.perf_counter() - t0), 1)}
    if k > 1:
        stats["train_agreement"] = sums["agree"].item() / seen
    return stats
