"""Scoring a network on a feed: accuracy, mean cross-entropy, confusion matrix and firing
rates. Training validates with it and every saved network is scored with it; it reads no
file."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .analysis import firing_rates
from .losses import logits_of
from .metrics import ACCURACY, CONFUSION, FIRING_RATES, LOSS
from .neurons import reset_states


@torch.no_grad()
def evaluate(model: torch.nn.Module, feed, batch_size: int,
             reset: Callable[[torch.nn.Module], None] = reset_states) -> dict:
    """``accuracy``, mean CE (``loss``), ``confusion`` matrix ``[true, predicted]`` and
    ``firing_rates`` of ``model`` on a feed's batches in order (``data.feeds``), its state ``reset`` before each batch."""
    was_training = model.training
    model.eval()
    confusion, loss_sum, seen = None, 0.0, 0
    with firing_rates(model) as rates:
        for x, y in feed.in_order(batch_size):
            reset(model)
            logits = logits_of(model(x))
            k = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(k, k, dtype=torch.long, device=logits.device)
                loss_sum = torch.zeros((), device=logits.device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)
            seen += len(y)
    model.train(was_training)
    n = max(seen, 1)
    return {ACCURACY: confusion.diag().sum().item() / n if seen else 0.0,
            LOSS: float(loss_sum) / n, CONFUSION: confusion.cpu().tolist() if seen else [],
            FIRING_RATES: rates}
