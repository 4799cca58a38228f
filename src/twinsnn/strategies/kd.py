"""Knowledge distillation from a frozen, trained teacher by logit matching (paper 5.3.3)."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import distill_loss, logits_of
from .base import Matched


@dataclass
class KD(Matched):
    """``L = alpha * SE(o_student, o_teacher)``: the student learns from the teacher's logits
    alone (``losses.distill_loss``); ``reduction`` and ``match`` as in ``TNA``."""

    reduction: str = "sum"
    match: str = "logits"
    needs_teacher = True
    with_ce = False  # the student's own cross-entropy is added (KDCE)

    def loss(self, outputs, target, share=None):
        if self.match == "logits":
            outputs = [logits_of(o) for o in outputs]
        return distill_loss(outputs[0], outputs[1], target, self.weight, self.reduction,
                            self.with_ce, share)


@dataclass
class KDCE(KD):
    """``L = CE(o_student) + alpha * SE(o_student, o_teacher)``."""

    with_ce = True
