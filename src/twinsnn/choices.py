"""The config keys that choose something by name, checked against the modules that own the
names: the registries (data sets, architectures, neurons, surrogates, strategies) as they are
now, so that one registered after a config was read counts, and the fixed alternatives of
quantization, losses and the runtime.

``config`` reads and types a config without importing any of them; whoever builds from a
config checks it here first (``fit``, ``twinsnn config show``, a sweep), and the registries
check again where they are used (``errors.lookup``).
"""
from __future__ import annotations

import difflib

from .config import Config, to_flat
from .data import DATASETS
from .data.feeds import ENCODINGS
from .errors import ConfigError
from .losses import MATCHES, REDUCTIONS
from .models import FC_NORMS, MODELS
from .neurons import NEURONS, SURROGATES
from .quant import DELTA_PER, DELTA_RULES, MODES, SCALES, check_threshold_rule
from .runtime import DEVICES, PRECISIONS
from .strategies import STRATEGIES


def choices() -> dict[str, tuple[str, ...]]:
    """The valid values of every key that names something, as the registries are now."""
    return {"data.name": tuple(DATASETS), "model.arch": tuple(MODELS),
            "model.fc_norm": FC_NORMS, "model.neuron": tuple(NEURONS),
            "model.encoding": ENCODINGS,
            "model.surrogate": tuple(SURROGATES), "train.lr_step_unit": ("epoch", "batch"),
            "train.device": DEVICES, "train.precision": PRECISIONS,
            "loss.strategy": tuple(STRATEGIES), "loss.reduction": REDUCTIONS,
            "loss.match": MATCHES,
            "quant.mode": ("none", *MODES), "quant.scale": ("auto", *SCALES),
            "quant.delta_rule": DELTA_RULES, "quant.delta_per": DELTA_PER}


def check_choices(cfg: Config) -> Config:
    """``cfg`` itself, or a ``ConfigError`` naming the first key whose value is not one of its
    choices (with the nearest one)."""
    flat = to_flat(cfg)
    for key, valid in choices().items():
        value = flat[key]
        if value not in valid:
            near = difflib.get_close_matches(value, valid, 1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{key} must be one of {', '.join(valid)}; got "
                              f"{value!r:.80}{hint}")
    check_threshold_rule(cfg.quant.delta_rule, cfg.quant.delta_per)
    return cfg
