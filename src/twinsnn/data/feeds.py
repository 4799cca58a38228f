"""How a split's batches reach the model: from tensors in memory, a map-style ``Dataset`` or
a ``DataLoader``, one interface for the training loop and evaluation.

A training epoch draws its order from a seeded generator (``order``) and, where the feed
augments, its augmentation from another (``aug``); a feed that is stopped mid-epoch starts
again at batch ``start`` with the same batches the uninterrupted epoch would have had:

- ``TensorFeed``: samples ``x [N, ...]``, labels ``y [N]`` held in memory (a built-in data
  set's uint8 images, with its ``Preprocess``: normalization, augmentation on the device);
  batch ``i`` is ``order[i*B:(i+1)*B]``.
- ``DatasetFeed``: any map-style ``Dataset`` of ``(x, y)`` samples, already model input;
  batch ``i`` is the same slice of the same order, fetched by a ``DataLoader`` (with
  ``workers`` processes) whose generator is seeded per epoch (``seed``); a resumed epoch
  fetches and drops its first ``start`` batches, so that random transforms in the workers
  repeat.
- ``LoaderFeed``: a user's ``DataLoader`` as it is: its own batch size, order and
  transforms. Its randomness (a shuffling sampler, the workers' seeds) comes from torch's
  global generator unless the loader has a generator of its own; the loop seeds that global
  generator for each epoch, so such a loader repeats, and a resumed epoch drops its first
  ``start`` batches.

Evaluation reads a feed in its stored order (``in_order``). A feed of your own data can
repeat a static batch over T (``repeat``, the ``model.encoding="repeat"`` option).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset, default_collate

from ..errors import TwinsnnError
from .splits import Dataset
from .transforms import Preprocess

Batch = tuple[torch.Tensor, torch.Tensor]
ENCODINGS = ("none", "repeat")  # how a batch of your own reaches the model (model.encoding)


def check_batch(batch, where: str) -> Batch:
    """``(x, y)`` of a batch a dataset or loader gave: ``x`` a tensor of samples, ``y`` one
    integer class label per sample; ``TwinsnnError`` (one line) for anything else."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TwinsnnError(f"{where} gives {type(batch).__name__} items; twinsnn trains on "
                           "(x, y) pairs: an input tensor and an integer class label")
    x, y = batch
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TwinsnnError(f"{where}: x and y must be tensors (or numbers that collate into "
                           f"them), got {type(x).__name__} and {type(y).__name__}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or x.dim() < 2 or \
            len(y) != len(x):
        raise TwinsnnError(f"{where}: a batch must be x [B, ...] and y [B] integer labels; "
                           f"got x {list(x.shape)}, y {y.dtype} {list(y.shape)}")
    return x, y.long()


class TensorFeed:
    """Samples held as tensors (``Dataset``), each batch made model input by ``preprocess``
    (augmenting when given ``aug``) on ``device``; ``x`` may stay on the CPU (copied per
    batch) or live on ``device``."""

    def __init__(self, data: Dataset, preprocess: Preprocess, device: torch.device,
                 repeat: int | None = None):
        self.data, self.preprocess, self.device, self.repeat = data, preprocess, device, repeat

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.repeat is None else x.expand(self.repeat, *x.shape)

    def __len__(self) -> int:
        return len(self.data)

    def steps(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def smallest_batch(self, batch_size: int) -> int:
        return min(batch_size, len(self) - (self.steps(batch_size) - 1) * batch_size)

    def epoch(self, order: torch.Tensor, batch_size: int, aug: torch.Generator | None,
              start: int, seed: int) -> Iterator[Batch]:
        order = order.to(self.device)
        for step in range(start, self.steps(batch_size)):
            index = order[step * batch_size:(step + 1) * batch_size]
            yield self._input(self.preprocess(self.data.x[index], aug)), self.data.y[index]

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        for begin in range(0, len(self), batch_size):
            x = self.data.x[begin:begin + batch_size].to(self.device)
            yield (self._input(self.preprocess(x)),
                   self.data.y[begin:begin + batch_size].to(self.device))


def _to(batch: Batch, device: torch.device, channels_last: bool, repeat: int | None) -> Batch:
    """A checked batch on ``device``; images channels-last where asked, and repeated over
    ``repeat`` timesteps (``[T, B, ...]``) where ``model.encoding="repeat"``."""
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if repeat is not None:
        x = x.expand(repeat, *x.shape)
    return x, y.to(device, non_blocking=True)


class DatasetFeed:
    """A map-style ``Dataset`` of ``(x, y)`` samples (model input as they are), batched in
    the seeded order by a ``DataLoader`` with ``workers`` worker processes."""

    def __init__(self, dataset: TorchDataset, device: torch.device, workers: int = 0,
                 channels_last: bool = False, name: str = "the dataset",
                 repeat: int | None = None):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TwinsnnError(f"{name} is a {type(dataset).__name__}: give a map-style "
                               "torch Dataset (with __getitem__ and __len__) or a DataLoader")
        self.dataset, self.device, self.workers = dataset, device, workers
        self.channels_last, self.name, self.repeat = channels_last, name, repeat

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    smallest_batch = TensorFeed.smallest_batch

    def _batches(self, index: list[int], batch_size: int, seed: int) -> Iterator[Batch]:
        loader = DataLoader(self.dataset, batch_size, sampler=index, num_workers=self.workers,
                            collate_fn=default_collate,
                            generator=torch.Generator().manual_seed(seed))
        for batch in loader:
            yield _to(check_batch(batch, self.name), self.device, self.channels_last,
                      self.repeat)

    def epoch(self, order: torch.Tensor, batch_size: int, aug: torch.Generator | None,
              start: int, seed: int) -> Iterator[Batch]:
        return itertools.islice(self._batches(order.tolist(), batch_size, seed), start, None)

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        return self._batches(list(range(len(self))), batch_size, 0)


class LoaderFeed:
    """A user's ``DataLoader``, iterated as it is (its batch size, order and transforms)."""

    def __init__(self, loader: DataLoader, device: torch.device, channels_last: bool = False,
                 name: str = "the DataLoader", repeat: int | None = None):
        self.loader, self.device, self.channels_last, self.name, self.repeat = \
            loader, device, channels_last, name, repeat

    def __len__(self) -> int:
        try:
            return len(self.loader.dataset)
        except TypeError:  # an iterable dataset: no length
            return len(self.loader) * (self.loader.batch_size or 1)

    def steps(self, batch_size: int) -> int:
        return len(self.loader)

    def smallest_batch(self, batch_size: int) -> int:
        size = self.loader.batch_size or 1
        last = len(self) - (self.steps(size) - 1) * size
        return size if self.loader.drop_last or last <= 0 else min(size, last)

    def _batches(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield _to(check_batch(batch, self.name), self.device, self.channels_last,
                      self.repeat)

    def epoch(self, order: torch.Tensor, batch_size: int, aug: torch.Generator | None,
              start: int, seed: int) -> Iterator[Batch]:
        return itertools.islice(self._batches(), start, None)

    def in_order(self, batch_size: int) -> Iterator[Batch]:
        return self._batches()
