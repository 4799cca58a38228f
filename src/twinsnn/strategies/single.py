"""One network on its cross-entropy (the baseline)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..losses import logits_of, shared
from .base import Strategy


@dataclass
class Single(Strategy):
    """``L = CE(o_0)``: one network, trained alone."""

    def loss(self, outputs, target, share=None):
        ce = shared(F.cross_entropy(logits_of(outputs[0]), target), share)
        return ce, {"ce/0": ce}
