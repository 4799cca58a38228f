"""Training strategies as loss functions over a list of member outputs.

Every strategy maps ``outputs`` (one tensor per network, base first) and the labels to
``(total, parts)``: ``total`` is the scalar to backpropagate, ``parts`` the named terms for
logging. An output is either logits ``[B, classes]`` or output potentials ``[T, B, classes]``;
cross-entropy is always on the logits (potentials summed over T), the matching term on
whatever was passed (per-timestep potentials match each timestep).

TNA (paper eq. 5), for k members:
    L = sum_i CE(o_i) + alpha * sum_{i>0} MSE(o_0, o_i)
KD (paper 5.3.3), with a frozen teacher as the last output:
    kd:    L = alpha * MSE(o_student, o_teacher)
    kd+ce: L = CE(o_student) + alpha * MSE(o_student, o_teacher)

A data-parallel rank holding a slice of the batch passes its ``share`` (slice size / batch
size): batch means (CE, ``batchmean``, ``mean``) are weighted by it, sums stay as they are,
so the ranks' losses add up to the loss of the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

STRATEGIES = ("single", "tna", "kd", "kd+ce")
REDUCTIONS = ("sum", "batchmean", "mean")
MATCHES = ("logits", "potentials")  # what the matching term compares


def logits_of(output: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, K]`` of a network's output: itself, or per-timestep outputs ``[T, B, K]``
    summed over T."""
    return output.sum(0) if output.dim() == 3 else output


def squared_error(a: torch.Tensor, b: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Squared difference of ``a`` and ``b``: summed over everything (``sum``), summed and
    divided by the batch size (``batchmean``; the batch is dim -2), or averaged (``mean``).

    With B samples, K classes (and T timesteps when matching potentials):
    ``sum = B * batchmean = B*K(*T) * mean``, so alpha converts between them by those factors.
    """
    diff = (a - b).square()
    if reduction == "sum":
        return diff.sum()
    if reduction == "batchmean":
        return diff.sum() / a.shape[-2]
    if reduction == "mean":
        return diff.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _shared(value: torch.Tensor, share: float | None, mean: bool = True) -> torch.Tensor:
    """A batch mean (``mean``) as a part of the whole batch's: times ``share``, if given."""
    return value * share if share is not None and mean else value


def cohort_loss(logits: list[torch.Tensor], target: torch.Tensor, alpha: float,
                reduction: str = "sum", share: float | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 5 generalised to k members: every member's CE plus alpha times the squared error
    between the base (``logits[0]``) and each other member; gradients reach both sides."""
    parts = {}
    total = 0.0
    for i, out in enumerate(logits):
        parts[f"ce/{i}"] = _shared(F.cross_entropy(logits_of(out), target), share)
        total = total + parts[f"ce/{i}"]
    if len(logits) > 1:
        match = _shared(sum(squared_error(logits[0], out, reduction) for out in logits[1:]),
                        share, reduction != "sum")
        parts["match"] = match
        parts["match_weighted"] = alpha * match
        total = total + alpha * match
    return total, parts


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                 alpha: float, reduction: str = "sum", with_ce: bool = True,
                 share: float | None = None):
    """KD baselines: ``alpha * MSE(student, teacher)`` (+ ``CE(student)`` with ``with_ce``).
    The teacher output is detached: the teacher never learns."""
    match = _shared(squared_error(student, teacher.detach(), reduction), share, reduction != "sum")
    parts = {"match": match, "match_weighted": alpha * match}
    total = alpha * match
    if with_ce:
        parts["ce/0"] = _shared(F.cross_entropy(logits_of(student), target), share)
        total = total + parts["ce/0"]
    return total, parts


class Strategy:
    """Binds a strategy's constants; ``trainable`` networks are trained, a ``teacher``
    (KD only) is run frozen and its output appended last. ``alpha`` may change between
    epochs (``alpha_at``); each call reads it."""

    def __init__(self, name: str, alpha: float, reduction: str, match: str, members: int):
        self.name, self.alpha, self.reduction, self.match = name, alpha, reduction, match
        self.trainable = members if name == "tna" else 1
        self.uses_teacher = name in ("kd", "kd+ce")

    def __call__(self, outputs: list[torch.Tensor], target: torch.Tensor,
                 share: float | None = None):
        if self.match == "logits":
            outputs = [logits_of(o) for o in outputs]
        if self.uses_teacher:
            return distill_loss(outputs[0], outputs[1], target, self.alpha, self.reduction,
                                self.name == "kd+ce", share)
        return cohort_loss(outputs, target, self.alpha, self.reduction, share)


def alpha_at(loss_cfg, compressed: bool) -> float:
    """The matching weight of an epoch: ``loss.alpha_compressed`` while the base is compressed
    (when set: 0 before the switch is late matching), else ``loss.alpha``."""
    if compressed and loss_cfg.alpha_compressed is not None:
        return loss_cfg.alpha_compressed
    return loss_cfg.alpha


def strategy_from_config(loss_cfg) -> Strategy:
    return Strategy(loss_cfg.strategy, loss_cfg.alpha, loss_cfg.reduction, loss_cfg.match,
                    loss_cfg.members)
