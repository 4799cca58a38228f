"""A cohort: the networks trained together (the base first, then its twins), their optimizer
and schedule, an optional frozen teacher, and the precision of their forward; built from a
config, each member from its own seed."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import Config, to_flat
from .data import DataSplits
from .errors import ConfigError
from .losses import Strategy
from .models import build_model, model_spec, parse_spec
from .runtime import autocast, place


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

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output potentials ``[T, B, classes]`` of every member, then of the teacher; in
        float32 also under bf16 autocast."""
        with autocast(self.precision, x.device, self.autocast_cache):
            outs = self.parallel(x) if self.parallel is not None else \
                [m.potentials(x) for m in self.members]
            if self.teacher is not None:
                with torch.no_grad():
                    outs.append(self.teacher.potentials(x))
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


def build_cohort(cfg: Config, data: DataSplits, strategy: Strategy, device) -> Cohort:
    """``strategy.trainable`` networks from their member seeds, and the teacher it needs."""
    spec = model_spec(cfg.model, data.num_classes, data.in_channels, data.image_size)
    seeds = [member_seed(cfg.train.seed, i) for i in range(strategy.trainable)]
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(place(build_model(cfg.model, data.num_classes, data.in_channels,
                                         data.image_size), cfg.train, device))
    teacher = None
    if strategy.uses_teacher:
        teacher, meta = load_model(Path(cfg.loss.teacher))
        if parse_spec(meta["model"]) != parse_spec(spec):
            raise ConfigError(f"teacher {cfg.loss.teacher} is a different network "
                              f"({meta['model']}) than the student ({spec})")
        teacher = place(teacher, cfg.train, device).requires_grad_(False)
    meta = {"model": spec, "data": {"name": data.name, "mean": list(data.mean),
                                    "std": list(data.std)}, "config": to_flat(cfg)}
    return Cohort(members, *optimization(members, cfg.train), teacher, cfg.train.precision,
                  seeds, meta)
