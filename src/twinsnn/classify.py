"""Classifying image files with a trained network, and the networks that ship with twinsnn.

An image (PNG, JPEG or anything Pillow reads, of any size) is converted as the network's
metadata says: to grayscale or RGB for its input channels, resized (bilinear) to its image
size, pixels scaled to [0, 1] and normalized with its data set's mean and std; then
presented as the training images were. The class is the argmax of the logits, its
probability their softmax.

``PRETRAINED``: the packed networks in ``twinsnn/pretrained/`` (``<name>.tnn``), each with
its record (``<name>.json``: how it was trained and what it scored).
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import dataset_module
from .errors import CheckpointError, ConfigError, DataError
from .files import first_line
from .losses import logits_of


def pretrained_names() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files("twinsnn.pretrained").iterdir()
                  if p.name.endswith(".tnn"))


def pretrained(name: str) -> Path:
    """The file of the shipped network ``name``; ``ConfigError`` naming the shipped ones."""
    if name not in pretrained_names():
        from difflib import get_close_matches
        near = get_close_matches(name, pretrained_names(), 1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"no shipped network {name!r}{hint}; shipped: "
                          f"{', '.join(pretrained_names())}")
    return Path(str(resources.files("twinsnn.pretrained").joinpath(f"{name}.tnn")))


def pretrained_record(name: str) -> dict:
    """How the shipped network ``name`` was trained and what it scored."""
    return json.loads(pretrained(name).with_suffix(".json").read_text())


def read_image(path: Path, channels: int, size, mean, std) -> torch.Tensor:
    """The image file at ``path`` as normalized input ``[C, H, W]`` (module docstring);
    ``DataError`` (one line) for a file that is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ConfigError(f"images have 1 or 3 channels; the network takes {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({first_line(e)})") from None
    x = torch.from_numpy(pixels).float().div_(255.0).reshape(size[0], size[1], channels)
    x = x.permute(2, 0, 1)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def classify(model: nn.Module, meta: dict, paths: list[Path]) -> list[dict]:
    """Class, class name and probability of every image file in ``paths`` under ``model``
    (eval mode), converted as ``meta`` (the network's file metadata) says."""
    spec, data = meta.get("model") or {}, meta.get("data") or {}
    if not (spec.get("in_channels") and spec.get("image_size") and data.get("mean")):
        raise CheckpointError("the network's file does not say what images it takes (input "
                              "channels, size, normalization): predict needs a built-in one")
    try:
        names = tuple(data.get("classes") or dataset_module(data.get("name")).CLASSES)
    except ConfigError:
        names = ()
    x = torch.stack([read_image(Path(p), spec["in_channels"], spec["image_size"],
                                data["mean"], data["std"]) for p in paths])
    with torch.no_grad():
        probabilities = torch.softmax(logits_of(model.eval()(x)), dim=1)
    best = probabilities.max(1)
    return [{"image": str(p), "class": int(c), "probability": float(q),
             "name": names[int(c)] if int(c) < len(names) else str(int(c))}
            for p, c, q in zip(paths, best.indices, best.values)]
