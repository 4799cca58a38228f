"""The running sums of a training epoch (loss and its named parts, correct predictions of
every member, base-twin agreement, samples seen), summed over data-parallel ranks and turned
into the epoch's statistics; a mid-epoch checkpoint keeps them."""
from __future__ import annotations

import torch

from .distributed import World
from .losses import logits_of


def new_sums(members: int, device) -> dict:
    return {"loss": torch.zeros((), device=device), "seen": 0,
            "correct": torch.zeros(members, device=device),
            "agree": torch.zeros((), device=device), "parts": {}}


def to_device(tree, device):
    if torch.is_tensor(tree):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree


@torch.no_grad()
def accumulate(sums: dict, loss, parts: dict, outputs: list, y: torch.Tensor,
                batch: int) -> None:
    """Add one batch to the epoch's sums: loss and loss parts (of the whole batch of size
    ``batch``, or this rank's share of it), correct predictions of every member and base-twin
    agreement on ``y``."""
    k = len(sums["correct"])
    preds = [logits_of(o).argmax(1) for o in outputs[:k]]
    sums["loss"] += loss.detach() * batch
    sums["correct"] += torch.stack([(p == y).sum() for p in preds]).float()
    if k > 1:
        sums["agree"] += (preds[0] == preds[1]).sum()
    for name, value in parts.items():
        sums["parts"][name] = sums["parts"].get(name, 0) + value.detach() * batch
    sums["seen"] += len(y)


def sum_over_ranks(sums: dict, world: World) -> dict:
    """The epoch's sums of all ranks (``sums`` itself in one process)."""
    if not world.active:
        return sums
    names = list(sums["parts"])
    flat = world.sum(torch.cat([sums["loss"].view(1), sums["agree"].view(1), sums["correct"],
                                torch.stack([sums["parts"][k] for k in names]).view(-1),
                                sums["loss"].new_tensor([sums["seen"]])]))
    k = len(sums["correct"])
    return {"loss": flat[0], "agree": flat[1], "correct": flat[2:2 + k],
            "parts": dict(zip(names, flat[2 + k:-1])), "seen": int(flat[-1].item())}


def epoch_stats(sums: dict, seen0: int, seconds: float) -> dict:
    seen, k = sums["seen"], len(sums["correct"])
    stats = {"train_loss": sums["loss"].item() / seen,
             **{f"train_acc/{i}": sums["correct"][i].item() / seen for i in range(k)},
             **{f"train_{name}": v.item() / seen for name, v in sums["parts"].items()},
             "samples_per_s": round((seen - seen0) / seconds, 1)}
    if k > 1:
        stats["train_agreement"] = sums["agree"].item() / seen
    return stats
