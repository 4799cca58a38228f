"""Training strategies by name, one file each; ``STRATEGIES`` is the registry.

A strategy is a ``Strategy`` object: how many networks train together, whether a frozen
teacher runs beside them, and the loss of their outputs (the math itself is in ``losses``,
pure functions). Adding one is its file (a ``Strategy`` subclass) and a line in
``STRATEGIES`` (or ``STRATEGIES[name] = cls`` from outside, at any time); ``fit`` also takes
an object of a class that is not registered.
"""
from __future__ import annotations

from ..errors import ConfigError, lookup
from .base import Matched, Strategy
from .dml import DML
from .kd import KD, KDCE
from .single import Single
from .tna import TNA

STRATEGIES = {"single": Single, "tna": TNA, "kd": KD, "kd+ce": KDCE, "dml": DML}


def from_config(loss_cfg) -> Strategy:
    """The strategy ``loss.strategy`` of ``STRATEGIES``, its settings from ``loss.*``."""
    return lookup(STRATEGIES, loss_cfg.strategy, "loss.strategy").from_config(loss_cfg)


def registered_name(strategy: Strategy) -> str | None:
    """The name ``strategy``'s class is registered under, None for a class of one's own."""
    return next((name for name, cls in STRATEGIES.items() if type(strategy) is cls), None)


def check_strategy(strategy) -> Strategy:
    """``strategy`` itself if it is a ``Strategy``, else a ``ConfigError``."""
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy= takes a name ({', '.join(STRATEGIES)}) or a "
                          f"twinsnn.strategies.Strategy, not a {type(strategy).__name__}")
    return strategy


__all__ = ["DML", "KD", "KDCE", "Matched", "STRATEGIES", "Single", "Strategy", "TNA",
           "check_strategy", "from_config", "registered_name"]
