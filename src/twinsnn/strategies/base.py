"""What every training strategy is: how many networks train together, whether a frozen
teacher runs beside them, and the loss of their outputs.

A strategy is an object (``Strategy``); the training loop calls only ``loss`` and
``set_compressed`` and reads ``members`` and ``needs_teacher``, so a class of one's own
trains through ``fit(strategy=MyStrategy(...))`` exactly as a built-in one does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


class Strategy:
    """A training strategy.

    Attributes:
        members: networks built by the model factory and trained (the base first).
        needs_teacher: a frozen, trained network runs beside them; its output comes last.

    Subclasses define ``loss``; the built-in ones are dataclasses whose fields are ``loss.*``
    config keys of the same name (``from_config`` reads them).
    """

    members: int = 1
    needs_teacher: bool = False

    def loss(self, outputs: list[torch.Tensor], target: torch.Tensor,
             share: float | None = None) -> tuple[torch.Tensor, dict]:
        """``(total, parts)`` of one batch: the scalar to backpropagate and its named terms
        for logging (``ce/i``: member i's cross-entropy).

        Args:
            outputs: one tensor per member, base first, then the teacher's (no gradient):
                logits ``[B, K]`` or per-timestep outputs ``[T, B, K]``.
            target: labels ``[B]``.
            share: on a data-parallel rank, its slice's part of the batch (``losses``).
        """
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def set_compressed(self, compressed: bool) -> None:
        """Called before every epoch with whether the base trains compressed in it."""

    @classmethod
    def from_config(cls, loss_cfg) -> Strategy:
        """The strategy with its fields set from the ``loss.*`` keys of the same name."""
        names = [f.name for f in dataclasses.fields(cls) if f.init] \
            if dataclasses.is_dataclass(cls) else []
        return cls(**{n: getattr(loss_cfg, n) for n in names if hasattr(loss_cfg, n)})

    def settings(self) -> dict:
        """The strategy's settings as a run records them (its dataclass fields)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


@dataclass
class Matched(Strategy):
    """A strategy with a matching term weighted by ``alpha``, and by ``alpha_compressed``
    while the base is compressed (None: ``alpha``; 0 before the switch and a weight after it
    is late matching)."""

    alpha: float = 1e-4
    alpha_compressed: float | None = None
    compressed: bool = field(default=False, init=False, repr=False)

    @property
    def weight(self) -> float:
        """The matching weight of the current epoch."""
        if self.compressed and self.alpha_compressed is not None:
            return self.alpha_compressed
        return self.alpha

    def set_compressed(self, compressed: bool) -> None:
        self.compressed = compressed
