"""twinsnn: spiking neural networks trained with twin network augmentation (TNA) and
compressed to ternary weights.

The public API: ``fit`` trains any network (a factory of ``nn.Module``s, or a built-in
architecture by name) on any ``Dataset`` / ``DataLoader`` (or a built-in data set) with a
strategy (a twin, a cohort, deep mutual learning, knowledge distillation, or one's own), and
compresses it to ternary or binary weights from a chosen epoch; ``export`` and ``load`` write
and read a network in any format of ``FORMATS`` (packed, safetensors, checkpoint, NIR);
``evaluate`` scores a network on data, or on the data set it was trained on; ``predict`` and
``classify_images`` run it; ``make_config`` builds a ``Config``.
"""
import warnings

from .api import (Run, classify_images, datasets, evaluate, export, fit, load, make_config,
                  predict, pretrained_path)
from .config import Config
from .errors import CheckpointError, ConfigError, DataError, TrainingError, TwinsnnError
from .formats import FORMATS
from .losses import cohort_loss, distill_loss, logits_of, mutual_loss
from .models import MODELS, build_model
from .neurons import NEURONS, SURROGATES, reset_states
from .quant import compress, compressed_layers, decompress, select_layers
from .strategies import STRATEGIES, Strategy
from .structure import Node, SpikingNetwork
from .version import __version__


def __getattr__(name: str):
    if name == "load_config":  # the old spelling of make_config, until the next release
        warnings.warn("twinsnn.load_config(preset, {key: value}) is twinsnn.make_config("
                      "preset, key=value) now; load_config goes in the next release",
                      DeprecationWarning, stacklevel=2)
        from .config import load_config
        return load_config
    raise AttributeError(f"module 'twinsnn' has no attribute {name!r}")


__all__ = ["CheckpointError", "Config", "ConfigError", "DataError", "FORMATS", "MODELS",
           "NEURONS", "Node", "Run", "STRATEGIES", "SURROGATES", "SpikingNetwork", "Strategy",
           "TrainingError", "TwinsnnError", "__version__", "build_model", "classify_images",
           "cohort_loss", "compress", "compressed_layers", "datasets", "decompress",
           "distill_loss", "evaluate", "export", "fit", "load", "logits_of", "make_config",
           "mutual_loss", "predict", "pretrained_path", "reset_states", "select_layers"]
