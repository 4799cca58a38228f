"""A saved network on the data set it was trained on: the test (or validation) split scored
as ``twinsnn eval`` does, with firing rates, operations and energy (``report``), from any
file ``formats`` reads (``evaluate_file``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .analysis import format_operations, operations, recording
from .config import from_record
from .data import build_data
from .data.feeds import TensorFeed
from .data.transforms import Preprocess
from .errors import CheckpointError, ConfigError
from .evaluation import evaluate
from .formats import format_of, read
from .runtime import place, resolve_device


def load(path, member: int = 0, integer: bool = False, model: torch.nn.Module | None = None):
    """``(network, meta)`` of ``formats.read``; ``integer``: its integer inference
    (``integer.integer_model``) instead, for the formats that hold weights."""
    path = Path(path)
    if integer and not format_of(path).own:
        raise CheckpointError(f"{path}: --integer runs a .tnn, checkpoint.pt or "
                              "model.safetensors of a compressed run, not a NIR graph")
    net, meta = read(path, model, member)
    if integer:
        from .integer import integer_model
        net = integer_model(net)
    return net, meta


def training_config(meta: dict, where=None):
    """The config a network's ``meta`` says it was trained with; ``CheckpointError`` naming
    ``where`` (its file) when it has none or it is not valid."""
    if not isinstance(meta.get("config"), dict):
        if where is None:
            raise CheckpointError("the network carries no training config to evaluate it with "
                                  "(it was not read from a file or trained by fit): pass the "
                                  "data, evaluate(model, data)")
        raise CheckpointError(f"{where}: holds no training config to evaluate it with")
    try:
        return from_record(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{where or 'the network'}: its training config is not valid "
                              f"({e})") from None


def load_for_eval(path: Path, member: int = 0, integer: bool = False):
    """``(network, config)`` of ``load``: the network and what it was trained with."""
    model, meta = load(path, member, integer)
    return model, training_config(meta, path)


def report(model: torch.nn.Module, meta: dict, split: str = "test", data_dir: str | None = None,
           device: str = "auto", where=None) -> dict:
    """Accuracy, mean CE, confusion matrix, firing rates and operations of ``model`` on the
    ``split`` (``test`` or ``val``) of the data set its ``meta`` says it was trained on, fed
    and placed as in training (``data_dir``: where that data set is)."""
    cfg = training_config(meta, where)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir))
    dev = resolve_device(device)
    data = build_data(cfg.data, cfg.model.timesteps)
    model = place(model, cfg.train, dev).eval()
    dataset = data.test if split == "test" else data.val
    feed = TensorFeed(dataset, Preprocess(data, False, cfg.train.channels_last), dev)
    with recording(model) as rec:
        result = evaluate(model, feed, cfg.train.eval_batch_size)
    return {"data": data.name, "split": split, "samples": len(dataset),
            **result, "operations": operations(model, rec)}


def evaluate_file(path: Path, member: int = 0, data_dir: str | None = None,
                  device: str = "auto", split: str = "test", integer: bool = False) -> dict:
    """``report`` of the network in the file at ``path`` (cohort ``member``; ``integer``: its
    integer inference), with where it came from."""
    model, meta = load(path, member, integer)
    return {"model": str(path), "member": member, "integer": integer,
            **report(model, meta, split, data_dir, device, path)}


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
