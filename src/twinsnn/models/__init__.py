"""Network architectures by name, one file each; ``MODELS`` is the registry.

An architecture is a function ``(cfg: ModelConfig, num_classes, in_channels, image_size) ->
SpikingNetwork`` (``structure``), built from ``cfg``'s width, timesteps, neuron and the rest.
Adding one is its file and a line in ``MODELS`` (or ``MODELS[name] = fn`` from outside, at any
time). ``model_spec`` is what a file records to rebuild a network.
"""
from __future__ import annotations

import dataclasses

from ..errors import lookup
from ..structure import SpikingNetwork
from .blocks import FC_NORMS
from .cifarnet import cifarnet
from .resnet import sew_resnet19
from .vgg import vgg11

MODELS = {"cifarnet": cifarnet, "vgg11": vgg11, "sew_resnet19": sew_resnet19}
SHAPE_KEYS = ("num_classes", "in_channels", "image_size")  # what a network takes from its data


def build_model(cfg, num_classes: int, in_channels: int, image_size) -> SpikingNetwork:
    """The network ``cfg.arch`` of ``MODELS``, for data of that many classes, channels and size,
    carrying its ``model_spec`` (``SpikingNetwork.meta``), so that any file it is written to
    rebuilds it."""
    net = lookup(MODELS, cfg.arch, "model.arch")(cfg, num_classes, in_channels, image_size)
    net.meta = {"model": model_spec(cfg, num_classes, in_channels, image_size)}
    return net


def model_spec(cfg, num_classes: int, in_channels: int, image_size) -> dict:
    """What a file records to rebuild the network: every ``ModelConfig`` field and the shape of
    the data (JSON-able)."""
    return {**dataclasses.asdict(cfg), "num_classes": num_classes, "in_channels": in_channels,
            "image_size": list(image_size)}


__all__ = ["FC_NORMS", "MODELS", "SHAPE_KEYS", "build_model", "cifarnet", "model_spec",
           "sew_resnet19", "vgg11"]
