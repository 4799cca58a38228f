"""Data sets by name. Each module in ``DATASETS`` provides

    NUM_CLASSES, MEAN, STD                      (per-channel statistics of pixels in [0, 1])
    CLASSES                                     class names (may be empty)
    AUGMENTATION                                a key of transforms.AUGMENTATIONS
    load(cfg: DataConfig, timesteps) -> (train, test, provenance: dict)  in-memory ``Dataset``s
    check(cfg: DataConfig) -> (bool, str)       usable?, and where it looked, what it found,
                                                how to get it

and ``build_data`` adds the seeded validation split. A data set that learns its classes or
statistics from its files (an image folder) returns them in the provenance, as ``classes``,
``mean`` and ``std``; they take the place of the module's.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..errors import lookup
from . import cifar, cifar10_dvs, fashion_mnist, image_folder
from .splits import DataSplits, Dataset, split_validation, stratified_subset
from .transforms import Preprocess

DATASETS = {"fashion-mnist": fashion_mnist, "cifar10": cifar.CIFAR10, "cifar100": cifar.CIFAR100,
            "cifar10-dvs": cifar10_dvs, "image-folder": image_folder.IMAGE_FOLDER,
            "cifar10-jpeg": image_folder.CIFAR10_JPEG}


def dataset_module(name: str):
    return lookup(DATASETS, name, "data.name")


def tensor_datasets(data: DataSplits) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """The train, validation and test splits as torch ``TensorDataset``s of model input:
    normalized float images ``[N, C, H, W]`` (frames ``[N, T, C, H, W]``, sample-major) and
    int64 labels."""
    preprocess, out = Preprocess(data, augment=False), []
    for split in (data.train, data.val, data.test):
        x = preprocess(split.x)
        out.append(TensorDataset(x.transpose(0, 1) if x.dim() == 5 else x, split.y))
    return tuple(out)


def build_data(cfg, timesteps: int) -> DataSplits:
    """Load ``cfg.name``, carve ``cfg.val_size`` validation samples from its training set and
    train on all the rest, a stratified subset of it (``cfg.train_size``) or its first
    ``cfg.train_limit`` samples."""
    source = dataset_module(cfg.name)
    train, test, provenance = source.load(cfg, timesteps)
    train, val, split = split_validation(train, cfg.val_size, cfg.val_seed)
    if cfg.train_size is not None:
        train, split["train_subset"] = stratified_subset(train, cfg.train_size,
                                                          cfg.train_subset_seed)
        split["train_size"] = len(train)
    elif cfg.train_limit is not None and cfg.train_limit < len(train):
        train = train.subset(torch.arange(cfg.train_limit))
        split["train_size"] = cfg.train_limit
    classes = len(provenance["classes"]) if "classes" in provenance else source.NUM_CLASSES
    return DataSplits(cfg.name, train, val, test, classes,
                      tuple(provenance.get("mean", source.MEAN)),
                      tuple(provenance.get("std", source.STD)), source.AUGMENTATION,
                      {**split, **provenance})


__all__ = ["DATASETS", "DataSplits", "Dataset", "build_data", "dataset_module",
           "tensor_datasets"]
