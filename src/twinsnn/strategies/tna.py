"""Twin network augmentation (paper eq. 5): a cohort trained together, its outputs matched."""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import cohort_loss, logits_of
from .base import Matched


@dataclass
class TNA(Matched):
    """``L = sum_i CE(o_i) + alpha * sum_{i>0} SE(o_0, o_i)`` over ``members`` networks
    (``losses.cohort_loss``); ``reduction`` of the squared errors SE (``sum``, the paper's
    reading, ``batchmean`` or ``mean``); ``match``: compare the logits or each timestep's
    ``potentials``."""

    members: int = 2
    reduction: str = "sum"
    match: str = "logits"

    def loss(self, outputs, target, share=None):
        if self.match == "logits":
            outputs = [logits_of(o) for o in outputs]
        return cohort_loss(outputs, target, self.weight, self.reduction, share)
