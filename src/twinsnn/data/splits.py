"""The in-memory data set every loader returns, and the seeded validation split."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    """Samples held in memory: ``x`` uint8 ``[N, C, H, W]`` images (or ``[N, T, C, H, W]``
    frames), ``y`` int64 ``[N]`` labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Dataset":
        return Dataset(self.x[index], self.y[index])


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test splits plus what the model and normalization need."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]  # per channel, for pixel values in [0, 1]
    std: tuple[float, ...]
    augmentation: str  # a key of transforms.AUGMENTATIONS
    split: dict  # how val (and test, where not official) were carved; recorded in run.json

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[-3]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.x.shape[-2:])


def split_validation(train: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset, dict]:
    """Carve a fixed, seeded validation set of ``val_size`` samples out of ``train``."""
    if not 0 <= val_size < len(train):
        raise ConfigError(f"data.val_size must be in [0, {len(train)}) (the training set's "
                          f"size), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size].sort().values, order[val_size:].sort().values
    record = {"val_size": val_size, "val_seed": seed, "train_size": len(train_index)}
    return train.subset(train_index), train.subset(val_index), record


def stratified_subset(train: Dataset, size: int, seed: int) -> tuple[Dataset, dict]:
    """``size`` samples of ``train`` drawn without replacement, each class in proportion to
    its share (quotas ``size * n_c / n`` rounded down, the rest to the largest remainders,
    ties to the lower class), from one generator seeded with ``seed``: the same subset for
    every run that names the same ``size`` and ``seed``. Returns it (in the original order)
    and a record naming it, with the SHA-256 of its indices."""
    n = len(train)
    if not 0 < size <= n:
        raise ConfigError(f"data.train_size must be in [1, {n}] (the training split's size), "
                          f"got {size}")
    counts = torch.bincount(train.y)
    exact = counts.double() * size / n
    quotas = exact.floor().long()
    short = size - int(quotas.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quotas[c]).item(), c))
    quotas[order[:short]] += 1
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c, quota in enumerate(quotas.tolist()):
        members = (train.y == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    index = torch.cat(picked).sort().values
    digest = hashlib.sha256(index.numpy().astype("<i8").tobytes()).hexdigest()
    record = {"rule": "stratified-random", "size": size, "seed": seed,
              "per_class": quotas.tolist(), "indices_sha256": digest}
    return train.subset(index), record
