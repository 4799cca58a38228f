"""Preprocessing of batches on the tensor's own device: one call per batch, no loop over
samples.

Images arrive as uint8 ``[B, C, H, W]``; they leave as normalized float ``[B, C, H, W]``.
Every random draw comes from the ``generator`` passed in, so a batch is reproducible from it.
"""
from __future__ import annotations

import torch

from .splits import DataSplits


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]; float input is taken as already scaled."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel, channels at dim -3."""
    shape = (-1, 1, 1)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4,
                     flip_p: float = 0.5) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back to ``H x W`` at a random offset, flip horizontally with
    probability ``flip_p``; one gather for the whole batch. ``[B, C, H, W] -> [B, C, H, W]``."""
    b, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    left = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
    flip = torch.rand((b, 1), device=dev, generator=generator) < flip_p
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip, w - 1 - cols, cols) + left  # [B, W]
    rows = torch.arange(h, device=dev).expand(b, h) + top  # [B, H]
    batch = torch.arange(b, device=dev).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C]
    return out.permute(0, 3, 1, 2)


def random_rotate_shear(x: torch.Tensor, generator: torch.Generator, max_rotation: float = 30.0,
                        max_shear: float = 30.0) -> torch.Tensor:
    """Rotate each sample by an angle drawn from [-max_rotation, max_rotation] degrees, then shear
    it along x by an angle drawn from [-max_shear, max_shear] degrees, about the image centre,
    nearest-neighbour with zero fill (torchvision's RandomRotation + RandomAffine(shear)). One
    draw per sample, shared by its ``T`` frames. ``[B, T, C, H, W] -> [B, T, C, H, W]``."""
    b, t, c, h, w = x.shape
    dev = x.device

    def draw(limit: float) -> torch.Tensor:  # [B] radians in [-limit, limit) degrees
        return torch.deg2rad((torch.rand(b, device=dev, generator=generator) * 2 - 1) * limit)

    rotation, shear = draw(max_rotation), draw(max_shear).tan()
    cos, sin = rotation.cos(), rotation.sin()
    zero, one = torch.zeros_like(shear), torch.ones_like(shear)
    # output pixel -> input pixel, both relative to the centre: rotate^-1 after shear^-1
    unrotate = torch.stack([cos, sin, -sin, cos], 1).view(b, 2, 2)
    unshear = torch.stack([one, shear, zero, one], 1).view(b, 2, 2)
    # affine_grid's [-1, 1] -> pixels: [w / 2, h / 2], made on the device (not copied there)
    half = w / 2 + (h - w) / 2 * torch.arange(2, device=dev)
    inverse = unrotate @ unshear * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta = torch.cat([inverse, torch.zeros(b, 2, 1, device=dev)], 2).to(x.dtype)
    grid = torch.nn.functional.affine_grid(theta, [b, t * c, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.reshape(b, t * c, h, w), grid, mode="nearest",
                                          padding_mode="zeros", align_corners=False)
    return out.view(b, t, c, h, w)


AUGMENTATIONS = {"crop_flip": random_crop_flip, "rotate_shear": random_rotate_shear}


class Preprocess:
    """uint8 samples -> normalized float model input; augments when given a generator.
    Frames ``[B, T, C, H, W]`` leave time-major ``[T, B, C, H, W]``."""

    def __init__(self, data: DataSplits, augment: bool, channels_last: bool = False):
        self.mean, self.std = torch.tensor(data.mean), torch.tensor(data.std)
        self.augmentation = AUGMENTATIONS[data.augmentation] if augment else None
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        x = to_unit(x)
        if generator is not None and self.augmentation is not None:
            x = self.augmentation(x, generator)
        if self.mean.device != x.device:  # moved once: a copy to a GPU waits for it
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = normalize(x, self.mean, self.std)
        if x.dim() == 5:
            return x.transpose(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
