"""Inference: accuracy, mean loss, confusion matrix and firing rates of a network on a data
split (``evaluate``), and of a saved network (inference model, training checkpoint or packed
export) on the test (or validation) split of the data set it was trained on."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from .analysis import firing_rates
from .checkpoint import load_checkpoint, load_model, member_from_checkpoint
from .config import from_flat
from .data import Dataset, build_data
from .data.transforms import Preprocess
from .errors import CheckpointError, ConfigError
from .runtime import place, resolve_device


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, preprocess: Preprocess, batch_size: int,
             device: torch.device, num_classes: int) -> dict:
    """Accuracy, mean CE, confusion matrix ``[true, predicted]`` and firing rates."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    with firing_rates(model) as rates:
        for start in range(0, len(data), batch_size):
            x = preprocess(data.x[start:start + batch_size].to(device))
            y = data.y[start:start + batch_size].to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                        minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train(was_training)
    n = max(len(data), 1)
    return {"acc": confusion.diag().sum().item() / n, "loss": loss_sum.item() / n,
            "confusion": confusion.cpu().tolist(), "rates": rates}


def load_for_eval(path: Path, member: int = 0):
    """``(model, config)`` from ``model.safetensors``, ``checkpoint.pt`` or a ``.tnn`` file."""
    if path.suffix == ".tnn":
        from .export import load_packed
        model, meta = load_packed(path)
    elif path.suffix == ".safetensors":
        if member != 0:
            raise CheckpointError(f"{path} holds the base network only; use checkpoint.pt "
                                  "for --member")
        model, meta = load_model(path)
    else:
        state = load_checkpoint(path)
        model, meta = member_from_checkpoint(state, member, path), state["meta"]
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config to evaluate it with")
    try:
        return model, from_flat(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its training config is not valid ({e})") from None


def evaluate_file(path: Path, member: int = 0, data_dir: str | None = None,
                  device: str = "auto", split: str = "test") -> dict:
    model, cfg = load_for_eval(path, member)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir))
    dev = resolve_device(device)
    data = build_data(cfg.data, cfg.model.timesteps)
    model = place(model, cfg.train, dev).eval()
    dataset = data.test if split == "test" else data.val
    preprocess = Preprocess(data, False, cfg.train.channels_last)
    result = evaluate(model, dataset, preprocess, cfg.train.eval_batch_size, dev, data.num_classes)
    return {"model": str(path), "member": member, "data": data.name, "split": split,
            "samples": len(dataset), "accuracy": result["acc"], "loss": result["loss"],
            "confusion": result["confusion"], "firing_rates": result["rates"]}


def format_report(report: dict) -> str:
    lines = [f"{report['model']} (member {report['member']}) on {report['data']} "
             f"{report['split']} ({report['samples']} samples)",
             f"accuracy: {100 * report['accuracy']:.2f}%   mean CE: {report['loss']:.4f}",
             "confusion matrix (rows: true class, columns: predicted):"]
    lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in report["confusion"]]
    lines.append("firing rates (spikes per neuron per timestep):")
    lines += [f"  {name:10s} {rate:.4f}" for name, rate in report["firing_rates"].items()]
    return "\n".join(lines)
