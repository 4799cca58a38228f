"""Deep mutual learning (Zhang, Xiang, Hospedales and Lu, CVPR 2018): every member learns from
the others' softened predictions."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import logits_of, mutual_loss
from .base import Matched


@dataclass
class DML(Matched):
    """For each of ``members`` networks, ``CE(o_i) + alpha * tau^2 / (k - 1) *
    sum_{j != i} KL(p_j || p_i)`` with ``p = softmax(logits / tau)`` and the others'
    ``p_j`` held constant (``losses.mutual_loss``); summed over the members, one update of
    all of them. ``alpha`` 1 and ``temperature`` 1 are the paper's."""

    alpha: float = 1.0
    members: int = 2
    temperature: float = 1.0

    def loss(self, outputs, target, share=None):
        return mutual_loss([logits_of(o) for o in outputs], target, self.weight,
                           self.temperature, share)
