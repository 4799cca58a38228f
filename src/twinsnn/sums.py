"""The running sums of a training epoch (loss and its named parts, correct predictions of
every member, base-twin agreement, samples seen), summed over data-parallel ranks and turned
into the epoch's statistics; a mid-epoch checkpoint keeps them (``state``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import metrics
from .distributed import World
from .losses import logits_of


@dataclass
class EpochSums:
    """Sums over the samples seen so far: ``loss`` and ``parts`` (each batch's value times its
    size), ``correct`` predictions ``[members]``, base-twin ``agree``ment; on the device, so
    that adding a batch waits for nothing."""

    loss: torch.Tensor
    correct: torch.Tensor
    agree: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0

    @classmethod
    def zeros(cls, members: int, device) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros(members, device=device),
                   torch.zeros((), device=device))

    @torch.no_grad()
    def add(self, loss: torch.Tensor, parts: dict, outputs: list, y: torch.Tensor,
            batch: int) -> None:
        """Add one batch: loss and loss parts (of the whole batch of size ``batch``, or this
        rank's share of it), correct predictions of every member and base-twin agreement on
        ``y``."""
        k = len(self.correct)
        preds = [logits_of(o).argmax(1) for o in outputs[:k]]
        self.loss += loss.detach() * batch
        self.correct += torch.stack([(p == y).sum() for p in preds]).float()
        if k > 1:
            self.agree += (preds[0] == preds[1]).sum()
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0) + value.detach() * batch
        self.seen += len(y)

    def mean_loss(self) -> float:
        return self.loss.item() / self.seen

    def accuracy(self, member: int = 0) -> float:
        return self.correct[member].item() / self.seen

    def over_ranks(self, world: World) -> EpochSums:
        """The sums of all ranks (``self`` in one process)."""
        if not world.active:
            return self
        names = list(self.parts)
        flat = world.sum(torch.cat([self.loss.view(1), self.agree.view(1), self.correct,
                                    torch.stack([self.parts[k] for k in names]).view(-1),
                                    self.loss.new_tensor([self.seen])]))
        k = len(self.correct)
        return EpochSums(flat[0], flat[2:2 + k], flat[1], dict(zip(names, flat[2 + k:-1])),
                         int(flat[-1].item()))

    def stats(self, seen0: int, seconds: float) -> dict:
        """The epoch's training figures (``metrics``): mean loss, every member's accuracy,
        the loss parts, samples per second since ``seen0`` over ``seconds``, agreement."""
        seen, k = self.seen, len(self.correct)
        stats = {metrics.TRAIN_LOSS: self.loss.item() / seen,
                 **{metrics.member_key("train", metrics.ACCURACY, i):
                    self.correct[i].item() / seen for i in range(k)},
                 **{metrics.part_key(name): v.item() / seen for name, v in self.parts.items()},
                 metrics.SPEED: round((seen - seen0) / seconds, 1)}
        if k > 1:
            stats[metrics.AGREEMENT] = self.agree.item() / seen
        return stats

    def state(self) -> dict:
        """The sums as a checkpoint keeps them (plain tensors and numbers)."""
        return {"loss": self.loss, "seen": self.seen, "correct": self.correct,
                "agree": self.agree, "parts": dict(self.parts)}

    @classmethod
    def from_state(cls, state: dict, device) -> EpochSums:
        """The sums a checkpoint kept (``state``), on ``device``."""
        return cls(state["loss"].to(device), state["correct"].to(device),
                   state["agree"].to(device),
                   {k: v.to(device) for k, v in state["parts"].items()}, state["seen"])
