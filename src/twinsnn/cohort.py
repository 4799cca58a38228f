"""A cohort: the networks trained together (the base first, then its twins), their optimizer
and schedule, an optional frozen teacher, and the precision of their forward; each member
made by the model factory from its own seed. ``train_step`` updates them on one batch."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import Config
from .errors import ConfigError, TwinsnnError
from .files import first_line
from .neurons import reset_states
from .quant import select_layers
from .runtime import autocast, place
from .safeguards import normalized, scales
from .strategies import Strategy


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across machines and Python versions."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def member_seed(seed: int, member: int) -> int:
    """Member 0 (the base) uses ``seed`` itself; each twin its own independent seed."""
    return seed if member == 0 else derive_seed(seed, "member", member)


@dataclass
class Cohort:
    """The networks being trained (base first), their optimizer and schedule, an optional
    frozen teacher, and the precision of their forward."""

    members: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    teacher: torch.nn.Module | None = None
    precision: str = "fp32"
    seeds: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # how to rebuild and feed the base
    parallel: torch.nn.Module | None = None  # the members data-parallel (distributed.World)
    autocast_cache: bool = True  # off for a CUDA graph's capture (graphs.GraphedStep)
    reset: Callable[[nn.Module], None] = reset_states  # clears a network's state before a batch
    layers: object = None  # which of the base's layers compression takes (quant.select_layers)
    normalized: dict | None = None  # {compressed layer: a normalization follows it}
    scales: dict | None = None  # {compressed layer: its scale} (safeguards.scales)
    checked: bool = False  # the outputs of a batch were checked against its labels

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every member, then of the teacher (``[T, B, classes]`` or ``[B,
        classes]``, as the networks give them; float32 also under bf16 autocast)."""
        for network in self.members + ([self.teacher] if self.teacher is not None else []):
            self.reset(network)
        with autocast(self.precision, x.device, self.autocast_cache):
            outs = self.parallel(x) if self.parallel is not None else \
                [m(x) for m in self.members]
            if self.teacher is not None:
                with torch.no_grad():
                    outs.append(self.teacher(x))
        return outs

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss``. Data-parallel, ``loss`` is this rank's share of the global
        batch's and DDP averages over the N ranks, so it is scaled by N first: the gradients
        come out summed over ranks, those of the global batch."""
        if self.parallel is not None:
            loss = loss * self.parallel.process_group.size()
        loss.backward()


def optimization(members: list, train_cfg) -> tuple[torch.optim.Adam,
                                                   torch.optim.lr_scheduler.StepLR]:
    """One Adam over every member's parameters and its StepLR schedule (paper 5.2)."""
    optimizer = torch.optim.Adam([p for m in members for p in m.parameters()], lr=train_cfg.lr)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, train_cfg.lr_step_size,
                                                      train_cfg.lr_gamma)


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Run Adam ``capturable`` (its step counts on the parameters' device, as a CUDA graph
    needs) or not (on the host, where it creates them). A loaded optimizer state brings the
    flag of the run that saved it, so whoever loads one sets its own again."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device if capturable else "cpu", torch.float32)


def build_cohort(cfg: Config, factory: Callable[[], nn.Module], strategy: Strategy, device,
                 teacher: nn.Module | None = None, meta: dict | None = None,
                 reset: Callable[[nn.Module], None] = reset_states, layers=None,
                 example: torch.Tensor | None = None) -> Cohort:
    """``strategy.members`` networks made by ``factory``, each after seeding torch with its
    member seed, placed on ``device`` as ``cfg.train`` says; the frozen ``teacher`` the
    strategy needs (placed alike); ``layers``: which of the base's layers are compressed (by
    default ``quant.layers``, see ``quant.select_layers``), each with the scale
    ``quant.scale`` gives it (``auto``: by whether a normalization follows it, seen on the
    sample batch ``example`` in a network that is not a ``SpikingNetwork``;
    ``safeguards``)."""
    if strategy.needs_teacher and teacher is None:
        raise ConfigError(f"the strategy {type(strategy).__name__} needs a teacher: --teacher "
                          "PATH (loss.teacher), or teacher= in twinsnn.fit")
    seeds = [member_seed(cfg.train.seed, i) for i in range(strategy.members)]
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = factory()
        if not isinstance(model, nn.Module):
            raise TwinsnnError(f"the model factory returned a {type(model).__name__}, not an "
                               "nn.Module; pass a function that builds a fresh network")
        members.append(place(model, cfg.train, device))
    if teacher is not None:
        teacher = place(teacher, cfg.train, device).requires_grad_(False).eval()
    cohort = Cohort(members, *optimization(members, cfg.train),
                    teacher if strategy.needs_teacher else None, cfg.train.precision, seeds,
                    meta or {}, reset=reset, layers=layers)
    if cfg.quant.mode != "none":
        names = select_layers(members[0], cfg.quant.layers if layers is None else layers,
                              cfg.quant.full_precision_ends)
        cohort.normalized = normalized(members[0], names, example, reset)
        cohort.scales = cohort.meta["quant_scales"] = scales(cfg.quant.scale, cohort.normalized)
    return cohort


def check_outputs(outputs: list[torch.Tensor], y: torch.Tensor) -> None:
    """``TwinsnnError`` unless every output is logits ``[B, K]`` or per-timestep outputs
    ``[T, B, K]`` for the batch of ``B = len(y)`` labels, all with the same ``K`` classes,
    and every label is a class ``0 <= y < K`` (reads the labels back from the device)."""
    classes = set()
    for output in outputs:
        if not torch.is_tensor(output) or output.dim() not in (2, 3) or \
                output.shape[-2] != len(y):
            shape = list(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise TwinsnnError(f"the model returned {shape} for a batch of {len(y)}: a model "
                               "returns logits [B, K] or per-timestep outputs [T, B, K]")
        classes.add(output.shape[-1])
    if len(classes) > 1:
        raise TwinsnnError(f"the networks give different numbers of classes: {sorted(classes)}")
    (k,) = classes
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= k:
        raise TwinsnnError(f"a label is {high if high >= k else low}, but the model gives "
                           f"{k} classes (labels must be 0 to {k - 1}): match the model's "
                           "output size to the data set's classes")


def train_step(cohort: Cohort, strategy: Strategy, x: torch.Tensor, y: torch.Tensor,
               share: float | None = None):
    """One update of every member on the batch ``(x, y)``: forward, the strategy's loss,
    backward, Adam (``share``: this rank's part of a data-parallel batch, see ``losses``).
    Returns ``(loss, parts, outputs)``; raises ``FloatingPointError`` when the update
    overflows. Nothing here waits for the device after the run's first batch (whose outputs
    are checked against the labels): whether the loss is finite is the caller's to check
    (the training loop does every ``train.LOSS_CHECK_EVERY`` steps)."""
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
