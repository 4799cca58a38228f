"""The run folder ``<out_dir>/<name>/`` and its life: start, resume, branch, stop. It is
the training loop's sink (``train.Sink``): it keeps each epoch's record and checkpoint.

- ``run.json``: the resolved config, member seeds, data split, versions, git commit (and
  whether the tree was dirty) and machine;
- ``metrics.jsonl``: one line per epoch;
- ``checkpoint.pt``: every member, the optimizer, the schedule and the position in the data,
  written after every epoch and, when the run is stopped, mid-epoch (with the RNG states and
  the running sums of the epoch);
- ``model.safetensors``: the base network, at the end;
- ``.lock``: held (``fcntl.flock``) by the one process writing the run, holding its PID;
- ``tensorboard/``: with ``train.tensorboard``, TensorBoard event files of every epoch's
  numbers (those of ``metrics.jsonl``, firing rates as ``firing_rate/<layer>``).

A run starts fresh, continues from its own checkpoint (``resume``), or starts from another
run's end-of-epoch checkpoint (``branch_from``) where that gives bitwise the run its config
gives from scratch (``check_branch``).
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from . import quant
from .version import __version__
from .checkpoint import (checkpoint_config, load_checkpoint, save_checkpoint, save_model,
                         weights_epoch)
from .cohort import set_capturable
from .config import Config, to_dict, to_flat
from .errors import CheckpointError, ConfigError, TrainingError, TwinsnnError
from .files import first_line, write_text

# Keys that may differ between a run and the run it branches from: they do not shape the
# epochs already trained (quant.* and loss.alpha_compressed only while neither run compresses
# before the branch point).
BRANCH_FREE_KEYS = ("name", "out_dir", "data.dir", "train.epochs", "train.eval_test",
                    "train.eval_batch_size", "train.tensorboard")


ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def cpu_info() -> dict:
    """The CPU as ``/proc/cpuinfo`` names it (one marketing name spans generations, so with
    family and model), its vector extensions that matter here, the level torch dispatches to
    and any limit put on the ISA the libraries use (``ONEDNN_MAX_CPU_ISA=AVX2`` etc.)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.processor() or platform.machine()),
            "family": fields.get("cpu family"), "model": fields.get("model"),
            "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}}


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), **cpu_info(),
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


def _from_switch(key: str) -> bool:
    """Keys that act only once compression is on."""
    return key.startswith("quant.") or key == "loss.alpha_compressed"


def check_branch(state: dict, cfg: Config, source: Path) -> None:
    """Raise ``ConfigError`` unless training ``cfg`` from ``state`` (an end-of-epoch
    checkpoint) gives bitwise the run ``cfg`` would give from scratch: the configs agree on
    everything that shaped the epochs done, and ``cfg`` has epochs left."""
    done, their_cfg = state["epoch"], checkpoint_config(state, source)
    theirs, ours = to_flat(their_cfg), to_flat(cfg)
    if state.get("step", 0) != 0:
        raise ConfigError(f"{source} was written mid-epoch; branch from the end of an epoch "
                          "(resume that run first)")
    if done >= cfg.train.epochs:
        raise ConfigError(f"{source} has {done} epochs done; the config trains "
                          f"{cfg.train.epochs}: raise train.epochs to branch from it")
    quant_same = all(theirs[k] == v for k, v in ours.items() if _from_switch(k))
    compressed = (quant.compression_on(c.quant, done - 1) for c in (their_cfg, cfg))
    if not quant_same and any(compressed):
        raise ConfigError(f"{source} and the config differ in quant.* or loss.alpha_compressed "
                          f"before epoch {done}; branch from a checkpoint written before "
                          "compression starts")
    differ = sorted(k for k in ours if theirs[k] != ours[k]
                    and k not in BRANCH_FREE_KEYS and not _from_switch(k))
    if differ:
        raise ConfigError(f"{source} was trained with other values of {', '.join(differ)}; "
                          "a branch may change only quant.*, loss.alpha_compressed, "
                          "train.epochs and where it writes")


def checkpoint_state(cfg: Config, cohort, epoch: int, step: int = 0, rng: dict | None = None,
                     sums: dict | None = None) -> dict:
    """Everything needed to continue: weights of every member, optimizer, schedule, the
    position in the data (``epoch``, ``step``) and, mid-epoch, the RNG states and sums."""
    return {"config": to_flat(cfg), "meta": cohort.meta, "epoch": epoch, "step": step,
            "members": [m.state_dict() for m in cohort.members],
            "optimizer": cohort.optimizer.state_dict(),
            "scheduler": cohort.scheduler.state_dict(), "rng": rng or {}, "sums": sums or {}}


def restore(cohort, state: dict, cfg: Config, path: Path) -> None:
    """Load every member, the optimizer and the schedule of a checkpoint into ``cohort``."""
    quant.set_compression(cohort.members[0], cfg.quant, weights_epoch(state), cohort.layers,
                          cohort.scales)
    if len(state["members"]) != len(cohort.members):
        raise CheckpointError(f"{path} holds {len(state['members'])} members; "
                              f"the config trains {len(cohort.members)}")
    try:
        for member, member_state in zip(cohort.members, state["members"]):
            member.load_state_dict(member_state)
        capturable = cohort.optimizer.param_groups[0]["capturable"]
        cohort.optimizer.load_state_dict(state["optimizer"])
        set_capturable(cohort.optimizer, capturable)
        cohort.scheduler.load_state_dict(state["scheduler"])
    except Exception as e:  # a damaged or tampered checkpoint
        raise CheckpointError(f"{path}: cannot restore the run from it "
                              f"({first_line(e)})") from None


def _metrics_before(path: Path, epochs_done: int) -> str:
    """The lines of ``metrics.jsonl`` for epochs ``< epochs_done`` ("" if there is none)."""
    if not path.exists():
        return ""
    return "".join(l + "\n" for l in path.read_text().splitlines()
                   if l.strip() and json.loads(l)["epoch"] < epochs_done)


class RunLock:
    """An exclusive ``fcntl.flock`` on ``path`` for one writer, with the holder's PID in the
    file. The kernel drops the lock with its process, so a killed run never blocks a resume;
    the file itself stays (removing it would let two processes lock two different files)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = None

    def acquire(self) -> None:
        """Take the lock or raise ``TwinsnnError`` naming the process that holds it; on a
        held lock nothing is written."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise TwinsnnError(f"{self.path.parent} is being written by another process "
                               f"(PID {holder or 'unknown'}); wait for it to end or choose "
                               "another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunFolder:
    """The files of the run ``cfg`` names, and the steps of its life. Only a ``writer``
    (the one process of a run, or rank 0 of a data-parallel one) locks and writes them."""

    def __init__(self, cfg: Config, writer: bool = True):
        self.cfg = cfg
        self.writer = writer
        self.dir = Path(cfg.out_dir) / cfg.name
        self.checkpoint = self.dir / "checkpoint.pt"
        self.metrics = self.dir / "metrics.jsonl"
        self.lock = RunLock(self.dir / ".lock")
        self.branch_from = None
        self.board = None  # the TensorBoard writer, opened at the first epoch logged

    def check(self, resume: bool, branch_from: Path | None) -> dict | None:
        """Before anything is loaded: the run can start as asked, and a writer holds the
        folder's lock (taken before anything is written). Returns the checkpoint to branch
        from, if any."""
        if resume and branch_from:
            raise ConfigError("--resume continues a run in its own folder; --branch-from "
                              "starts a new one: pass only one")
        if resume and not self.checkpoint.exists():
            raise TwinsnnError(f"nothing to resume: {self.checkpoint} does not exist")
        source = None
        if branch_from:
            self.branch_from = Path(branch_from)
            source = load_checkpoint(self.branch_from)
            check_branch(source, self.cfg, self.branch_from)
        if self.writer:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
            except OSError as e:
                raise TwinsnnError(f"cannot write to run folder {self.dir} ({e.strerror}); "
                                   "choose another --out-dir") from None
        if not resume and self.checkpoint.exists():
            self.lock.release()
            raise TwinsnnError(f"{self.dir} already holds a run; pass --resume to continue "
                               "it or --name to start another")
        return source

    def release(self) -> None:
        """Let another process write the folder (also done by the kernel at exit)."""
        if self.board is not None:
            self.board.close()
            self.board = None
        self.lock.release()

    def start(self, cohort, split: dict, deterministic: bool, source: dict | None,
              processes: int = 1, notes: dict | None = None) -> int:
        """Write a new run's ``run.json`` (with ``notes``: what the run was given or chose
        beside its config) and ``metrics.jsonl`` (the source's epochs when branching, after
        restoring its state); returns the first epoch to train."""
        device = next(cohort.members[0].parameters()).device
        info = {"config": to_dict(self.cfg), **(notes or {}), "member_seeds": cohort.seeds,
                "data_split": split, "twinsnn_version": __version__,
                "code": code_version(), "torch_version": torch.__version__,
                "deterministic": deterministic, "processes": processes,
                "machine": machine_info(device),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        start_epoch, metrics = 0, ""
        if source is not None:
            restore(cohort, source, self.cfg, self.branch_from)
            start_epoch = source["epoch"]
            info["branched_from"] = {"checkpoint": str(self.branch_from),
                                     "epochs_done": start_epoch,
                                     "name": source["config"]["name"]}
            metrics = _metrics_before(self.branch_from.parent / "metrics.jsonl", start_epoch)
        if self.writer:
            write_text(self.metrics, metrics)
            write_text(self.dir / "run.json", json.dumps(info, indent=2) + "\n")
        return start_epoch

    def resume(self, cohort) -> dict:
        """Continue from the run's checkpoint: same config, its state, its metrics up to
        there. Returns the checkpoint (``epoch``, and ``step`` > 0 when mid-epoch)."""
        state = load_checkpoint(self.checkpoint)
        if checkpoint_config(state, self.checkpoint) != self.cfg:
            raise ConfigError(f"{self.checkpoint} was written by a different config; resume "
                              "with the same preset and --set values")
        restore(cohort, state, self.cfg, self.checkpoint)
        if self.writer and self.metrics.exists():  # drop lines of epochs written after the checkpoint
            write_text(self.metrics, _metrics_before(self.metrics, state["epoch"]))
        return state

    def log(self, record: dict) -> None:
        """Append one epoch's line to ``metrics.jsonl`` (on disk before the checkpoint that
        follows it), and with ``train.tensorboard`` its scalars."""
        if not self.writer:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.cfg.train.tensorboard:
            self._board(record)

    def _board(self, record: dict) -> None:
        """The record's numbers as TensorBoard scalars at step ``epoch``; a resumed run drops
        the events of epochs it trains again (``purge_step``)."""
        epoch = record["epoch"]
        if self.board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard needs TensorBoard: pip install "
                                  "'twinsnn[tensorboard]'") from None
            self.board = SummaryWriter(str(self.dir / "tensorboard"), purge_step=epoch)
        scalars = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        scalars.update({f"firing_rate/{k}": v for k, v in record.get("firing_rates", {}).items()})
        for name, value in scalars.items():
            self.board.add_scalar(name, value, epoch)
        self.board.flush()

    def note(self, key: str, value) -> None:
        """Add ``value`` to the list ``key`` of ``run.json`` (what the run said while it ran)."""
        if not self.writer:
            return
        info = json.loads((self.dir / "run.json").read_text())
        info[key] = [*info.get(key, []), value]
        write_text(self.dir / "run.json", json.dumps(info, indent=2) + "\n")

    def save(self, cohort, epoch: int, step: int = 0, rng: dict | None = None,
             sums: dict | None = None) -> None:
        """Write ``checkpoint.pt`` (``checkpoint_state``)."""
        if self.writer:
            save_checkpoint(self.checkpoint, checkpoint_state(self.cfg, cohort, epoch, step, rng,
                                                              sums))

    def finish(self, base: torch.nn.Module, meta: dict) -> None:
        """Write the base network (compressed weights baked in) as ``model.safetensors``."""
        if self.writer:
            save_model(self.dir / "model.safetensors", base, meta)

    def fault(self, what: str, epoch: int, step: int) -> TrainingError:
        """The error that stops a run whose numbers are no longer finite."""
        kept = (f"the last good checkpoint {self.checkpoint} is kept"
                if self.checkpoint.exists() else "no checkpoint had been written yet")
        return TrainingError(f"{what} at epoch {epoch} step {step}; {kept} (lower train.lr?)")
