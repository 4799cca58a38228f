"""The in-memory data set every loader returns, and the seeded validation split."""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
        raise ValueError(f"val_size must be in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size].sort().values, order[val_size:].sort().values
    record = {"val_size": val_size, "val_seed": seed, "train_size": len(train_index)}
    return train.subset(train_index), train.subset(val_index), record
