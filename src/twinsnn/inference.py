"""Inference: accuracy, mean loss, confusion matrix and firing rates of a network on a data
split (``evaluate``), and of a saved network (inference model, training checkpoint, packed
export or NIR graph) on the test (or validation) split of the data set it was trained on."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .analysis import firing_rates, format_operations, operations, recording
from .checkpoint import load_checkpoint, load_model, member_from_checkpoint
from .config import from_record
from .data import build_data
from .data.feeds import TensorFeed
from .data.transforms import Preprocess
from .errors import CheckpointError, ConfigError
from .losses import logits_of
from .metrics import ACCURACY, CONFUSION, FIRING_RATES, LOSS
from .neurons import reset_states
from .runtime import place, resolve_device


@torch.no_grad()
def evaluate(model: torch.nn.Module, feed, batch_size: int,
             reset: Callable[[torch.nn.Module], None] = reset_states) -> dict:
    """``accuracy``, mean CE (``loss``), ``confusion`` matrix ``[true, predicted]`` and
    ``firing_rates`` of ``model`` on a feed's batches in order (``data.feeds``), its state
    ``reset`` before each batch."""
    was_training = model.training
    model.eval()
    confusion, loss_sum, seen = None, 0.0, 0
    with firing_rates(model) as rates:
        for x, y in feed.in_order(batch_size):
            reset(model)
            logits = logits_of(model(x))
            k = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(k, k, dtype=torch.long, device=logits.device)
                loss_sum = torch.zeros((), device=logits.device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)
            seen += len(y)
    model.train(was_training)
    n = max(seen, 1)
    return {ACCURACY: confusion.diag().sum().item() / n if seen else 0.0,
            LOSS: float(loss_sum) / n, CONFUSION: confusion.cpu().tolist() if seen else [],
            FIRING_RATES: rates}


def load_network(path: Path, member: int = 0, model: torch.nn.Module | None = None):
    """``(model, meta)`` from ``model.safetensors``, ``checkpoint.pt``, a ``.tnn`` or a
    ``.nir`` file; ``model``: a fresh network of your own class to load the weights into (a
    built-in one is built from the file)."""
    path = Path(path)
    if model is not None and path.suffix not in (".tnn", ".safetensors"):
        raise CheckpointError(f"{path}: a network of your own loads from a .tnn export or a "
                              "model.safetensors")
    if member != 0 and path.suffix in (".nir", ".safetensors"):
        raise CheckpointError(f"{path} holds the base network only; use checkpoint.pt "
                              "for --member")
    if path.suffix == ".nir":
        from .nir import read_graph
        model, meta = read_graph(path)
    elif path.suffix == ".tnn":
        from .packed import load_packed
        model, meta = load_packed(path, model)
    elif path.suffix == ".safetensors":
        model, meta = load_model(path, model)
    else:
        state = load_checkpoint(path)
        model, meta = member_from_checkpoint(state, member, path), state["meta"]
    return model, meta


def load_for_eval(path: Path, member: int = 0, integer: bool = False):
    """``(model, config)`` of ``load_network``; ``integer``: its integer inference
    (``integer.py``)."""
    model, meta = load_network(path, member)
    if integer:
        if path.suffix == ".nir":
            raise CheckpointError(f"{path}: --integer runs a .tnn, checkpoint.pt or "
                                  "model.safetensors of a compressed run, not a NIR graph")
        from .integer import integer_model
        model = integer_model(model)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config to evaluate it with")
    try:
        return model, from_record(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its training config is not valid ({e})") from None


def evaluate_file(path: Path, member: int = 0, data_dir: str | None = None,
                  device: str = "auto", split: str = "test", integer: bool = False) -> dict:
    model, cfg = load_for_eval(path, member, integer)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir))
    dev = resolve_device(device)
    data = build_data(cfg.data, cfg.model.timesteps)
    model = place(model, cfg.train, dev).eval()
    dataset = data.test if split == "test" else data.val
    feed = TensorFeed(dataset, Preprocess(data, False, cfg.train.channels_last), dev)
    with recording(model) as rec:
        result = evaluate(model, feed, cfg.train.eval_batch_size)
    return {"model": str(path), "member": member, "integer": integer, "data": data.name,
            "split": split, "samples": len(dataset), **result,
            "operations": operations(model, rec)}


def format_report(report: dict) -> str:
    integer = ", integer inference" if report["integer"] else ""
    lines = [f"{report['model']} (member {report['member']}{integer}) on {report['data']} "
             f"{report['split']} ({report['samples']} samples)",
             f"accuracy: {100 * report['accuracy']:.2f}%   mean CE: {report['loss']:.4f}",
             "confusion matrix (rows: true class, columns: predicted):"]
    lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in report["confusion"]]
    lines.append("firing rates (spikes per neuron per timestep):")
    lines += [f"  {name:10s} {rate:.4f}" for name, rate in report["firing_rates"].items()]
    lines.append(format_operations(report["operations"]))
    return "\n".join(lines)
