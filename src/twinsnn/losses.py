"""The loss math of the training strategies (``strategies``), as pure functions over a list
of member outputs.

Each maps ``outputs`` (one tensor per network, base first) and the labels to ``(total,
parts)``: ``total`` is the scalar to backpropagate, ``parts`` the named terms for logging. An
output is either logits ``[B, classes]`` or output potentials ``[T, B, classes]``;
cross-entropy is always on the logits (potentials summed over T), the matching term on
whatever was passed (per-timestep potentials match each timestep).

TNA (paper eq. 5), for k members:
    L = sum_i CE(o_i) + alpha * sum_{i>0} MSE(o_0, o_i)
KD (paper 5.3.3), with a frozen teacher as the last output:
    kd:    L = alpha * MSE(o_student, o_teacher)
    kd+ce: L = CE(o_student) + alpha * MSE(o_student, o_teacher)
DML (Zhang et al., CVPR 2018, its loss for k networks), ``p_i = softmax(o_i / tau)``:
    L = sum_i [CE(o_i) + alpha * tau^2 / (k - 1) * sum_{j != i} KL(p_j || p_i)]

A data-parallel rank holding a slice of the batch passes its ``share`` (slice size / batch
size): batch means (CE, ``batchmean``, ``mean``) are weighted by it, sums stay as they are,
so the ranks' losses add up to the loss of the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def shared(value: torch.Tensor, share: float | None, mean: bool = True) -> torch.Tensor:
    """A batch mean (``mean``) as a part of the whole batch's: times ``share``, if given."""
    return value * share if share is not None and mean else value


def cohort_loss(logits: list[torch.Tensor], target: torch.Tensor, alpha: float,
                reduction: str = "sum", share: float | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 5 generalised to k members: every member's CE plus alpha times the squared error
    between the base (``logits[0]``) and each other member; gradients reach both sides."""
    parts = {}
    total = 0.0
    for i, out in enumerate(logits):
        parts[f"ce/{i}"] = shared(F.cross_entropy(logits_of(out), target), share)
        total = total + parts[f"ce/{i}"]
    if len(logits) > 1:
        match = shared(sum(squared_error(logits[0], out, reduction) for out in logits[1:]),
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
    match = shared(squared_error(student, teacher.detach(), reduction), share, reduction != "sum")
    parts = {"match": match, "match_weighted": alpha * match}
    total = alpha * match
    if with_ce:
        parts["ce/0"] = shared(F.cross_entropy(logits_of(student), target), share)
        total = total + parts["ce/0"]
    return total, parts


def mutual_loss(logits: list[torch.Tensor], target: torch.Tensor, alpha: float,
                temperature: float = 1.0, share: float | None = None) -> tuple[torch.Tensor, dict]:
    """Deep mutual learning (Zhang et al., CVPR 2018) for k members ``logits`` ``[B, K]``:
    ``sum_i CE(o_i) + alpha * tau^2 * match`` with ``match = sum_i 1/(k-1) sum_{j != i}
    KL(p_j || p_i)``, ``p = softmax(o / tau)``, each KL summed over the classes and averaged
    over the batch (as CE is). In member i's term ``p_j`` is a constant: member i's
    gradient is that of its own loss alone, the paper's update with the others' current
    predictions. ``tau^2`` keeps the gradients' size across temperatures (Hinton et al.)."""
    parts = {}
    total = 0.0
    for i, out in enumerate(logits):
        parts[f"ce/{i}"] = shared(F.cross_entropy(out, target), share)
        total = total + parts[f"ce/{i}"]
    k = len(logits)
    if k > 1:
        log_p = [F.log_softmax(out / temperature, dim=-1) for out in logits]
        match = sum(F.kl_div(log_p[i], log_p[j].detach(), reduction="batchmean",
                             log_target=True)
                    for i in range(k) for j in range(k) if j != i) / (k - 1)
        parts["match"] = shared(match, share)
        parts["match_weighted"] = alpha * temperature ** 2 * parts["match"]
        total = total + parts["match_weighted"]
    return total, parts
