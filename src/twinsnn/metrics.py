"""The names of what training logs and evaluation reports, spelled here only.

An epoch's record (a line of ``metrics.jsonl``, ``Run.record``, what ``on_epoch_end`` sees)::

    epoch, lr, compressed, epoch_time_s
    train_loss, train_accuracy/<i>, train_<part> (the strategy's named terms, e.g. ce/0,
    match), train_agreement (base and twin predict alike), samples_per_s
    <split>_accuracy/<i>, <split>_loss/<i>      for split val (and test), member i
    firing_rates                                {layer: spikes per neuron per step}, base, val

An evaluation (``twinsnn.evaluate``, ``twinsnn eval``): ``accuracy``, ``loss`` (mean
cross-entropy), ``confusion`` and ``firing_rates``. Records written before accuracy was spelled
out (``val_acc/0``; ``acc`` and ``rates`` of an evaluation) are read with the names of today
(``renamed``), and ``Results`` still answers the old names for a while, with a warning.
"""
from __future__ import annotations

import warnings

ACCURACY = "accuracy"
LOSS = "loss"
CONFUSION = "confusion"
FIRING_RATES = "firing_rates"
AGREEMENT = "train_agreement"
TRAIN_LOSS = "train_loss"
SPEED = "samples_per_s"

OLD_NAMES = {"acc": ACCURACY, "rates": FIRING_RATES}  # old spelling -> today's


def member_key(split: str, name: str, member: int = 0) -> str:
    """``member_key("val", ACCURACY, 0) == "val_accuracy/0"``: a member's figure on a split."""
    return f"{split}_{name}/{member}"


def part_key(part: str) -> str:
    """A loss term's key in the record: ``train_ce/0``, ``train_match``."""
    return f"train_{part}"


def new_name(key: str) -> str:
    """Today's spelling of a record's or a result's key, or of a metric a family file names
    (``val_acc/0 -> val_accuracy/0``, ``test_acc -> test_accuracy``, ``acc -> accuracy``);
    other keys as they are."""
    if key in OLD_NAMES:
        return OLD_NAMES[key]
    head, slash, member = key.partition("/")
    if head.endswith("_acc"):
        return f"{head.removesuffix('acc')}{ACCURACY}{slash}{member}"
    return key


def renamed(record: dict) -> dict:
    """``record`` with its keys spelled as today, in their order (old records as new)."""
    return {new_name(k): v for k, v in record.items()}


class Results(dict):
    """A dict of figures that answers an old spelling (``record["val_acc/0"]``,
    ``result["acc"]``) with today's value and a ``FutureWarning``; the old names go in a
    later release."""

    def _today(self, key):
        """Today's spelling of an old ``key`` that this dict holds (with a warning), else
        None."""
        new = new_name(key) if isinstance(key, str) else key
        if new == key or not dict.__contains__(self, new):
            return None
        warnings.warn(f"{key!r} is now spelled {new!r}", FutureWarning, stacklevel=3)
        return new

    def __missing__(self, key):
        new = self._today(key)
        if new is None:
            raise KeyError(key)
        return self[new]

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or self._today(key) is not None

    def get(self, key, default=None):
        new = key if dict.__contains__(self, key) else self._today(key)
        return default if new is None else dict.__getitem__(self, new)
