"""twinsnn: spiking neural networks trained with twin network augmentation (TNA) and
compressed to ternary weights.

The public API: ``fit`` trains any network (a factory of ``nn.Module``s, or a built-in
architecture by name) on any ``Dataset`` / ``DataLoader`` (or a built-in data set) with a
twin, a cohort or knowledge distillation, and compresses it to ternary or binary weights
from a chosen epoch; ``export`` and ``load`` write and read a network in any format of
``formats.FORMATS`` (packed, safetensors, checkpoint, NIR); ``evaluate`` scores a network on
data, or on the data set it was trained on; ``predict`` and ``classify_images`` run it.
"""
from .api import (Run, classify_images, datasets, evaluate, export, fit, load, make_config,
                  predict, pretrained_path)
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, DataError, TrainingError, TwinsnnError
from .formats import FORMATS
from .losses import cohort_loss, distill_loss, logits_of
from .models import MODELS, build_model
from .neurons import NEURONS, SURROGATES, reset_states
from .quant import compress, compressed_layers, decompress, select_layers
from .structure import Node, SpikingNetwork
from .version import __version__

__all__ = ["CheckpointError", "Config", "ConfigError", "DataError", "FORMATS", "MODELS",
           "NEURONS", "Node", "Run", "SURROGATES", "SpikingNetwork", "TrainingError",
           "TwinsnnError", "__version__", "build_model", "classify_images", "cohort_loss",
           "compress", "compressed_layers", "datasets", "decompress", "distill_loss",
           "evaluate", "export", "fit", "load", "load_config", "logits_of", "make_config",
           "predict", "pretrained_path", "reset_states", "select_layers"]
