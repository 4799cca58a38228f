"""Code-free persistence: training checkpoints and inference models, each written whole by
``files.atomic_write``.

A training checkpoint (``checkpoint.pt``) holds every cohort member, the optimizer, the
scheduler and the epoch count; it is read with ``torch.load(weights_only=True)``, which
refuses any pickled object that is not a tensor or plain container, so a crafted file
cannot run code. An inference model (``model.safetensors``) holds the base network only,
as safetensors tensors plus a JSON header describing how to rebuild it. A network described
by a file is sized on the meta device before it is built, and refused when its weights would
need more memory than the file holds.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import quant
from .config import Config, ModelConfig, from_flat, from_record, to_flat
from .errors import CheckpointError, ConfigError
from .files import atomic_write, first_line, save_safetensors
from .models import SHAPE_KEYS, build_model

MODEL_FORMAT = "twinsnn-model/1"


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint without executing pickled code: a zip archive as
    ``torch.save`` writes it, with no compressed record that could inflate without bound."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            compressed = any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist())
        if compressed:
            raise CheckpointError("it holds compressed records")
        with warnings.catch_warnings():  # torch warns about odd pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; all mean "not ours"
        raise CheckpointError(f"{path}: not a readable twinsnn checkpoint "
                              f"({first_line(e)})") from None
    members = state.get("members") if isinstance(state, dict) else None
    if not (isinstance(members, list) and members and all(isinstance(m, dict) for m in members)
            and isinstance(state.get("config"), dict) and isinstance(state.get("meta"), dict)
            and isinstance(state["meta"].get("model"), dict)
            and type(state.get("epoch")) is int and state["epoch"] >= 0):
        raise CheckpointError(f"{path}: not a twinsnn training checkpoint (missing or malformed "
                              "members, config, meta or epoch)")
    return state


def parse_spec(spec: dict) -> tuple[ModelConfig, int, int, tuple[int, int]]:
    """``(cfg, num_classes, in_channels, image_size)`` of a ``models.model_spec``, its values
    checked as config values are. ``ModelConfig`` fields it lacks take their defaults (files
    written before the field existed); keys that are neither fields nor ``SHAPE_KEYS`` are
    ignored."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a model spec is a mapping, not a {type(spec).__name__}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = from_flat({f"model.{k}": v for k, v in spec.items() if k in fields}).model
    num_classes, in_channels, size = (spec.get(k) for k in SHAPE_KEYS)
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            type(n) is int and n > 0 for n in (num_classes, in_channels, *size))):
        raise ConfigError("a model spec needs positive integers num_classes and in_channels "
                          "and an image_size of two")
    return cfg, num_classes, in_channels, tuple(size)


def build_from_spec(spec: dict) -> torch.nn.Module:
    """The network a ``models.model_spec`` describes (see ``parse_spec``)."""
    return build_model(*parse_spec(spec))


def build_from_header(spec, path, max_bytes: int) -> torch.nn.Module:
    """``build_from_spec(spec)`` for a network a file describes. Sized on the meta device
    first: ``CheckpointError`` when ``spec`` is invalid or its weights need more than
    ``max_bytes``, or when the file holds a network of a user's own class (which only that
    class can hold: load it with ``model=``)."""
    if isinstance(spec, dict) and "arch" not in spec:
        kind = f"a {spec['class']!s:.100}, " if spec.get("class") else ""
        raise CheckpointError(f"{path} holds {kind}a network of your own, not a built-in one: "
                              "load it into one with twinsnn.load(path, model=YourNet())")
    try:
        with torch.device("meta"):
            shell = build_from_spec(spec)
        need = sum(t.numel() * t.element_size() for t in shell.state_dict().values())
    except Exception as e:  # any bad value in an untrusted header
        raise CheckpointError(f"{path}: cannot build the model it describes "
                              f"({first_line(e)})") from None
    if need > max_bytes:
        raise CheckpointError(f"{path}: describes a model of {need} bytes of weights, more "
                              f"than the {max_bytes} bytes it can hold")
    return build_from_spec(spec)


def _stored_bytes(tensors: dict) -> int:
    """Bytes of the distinct CPU storages behind ``tensors``: what was really read for them."""
    storages = {}
    for t in tensors.values():
        if torch.is_tensor(t) and t.layout == torch.strided and t.device.type == "cpu":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def weights_epoch(state: dict) -> int:
    """The epoch whose compression state the saved weights are in: a checkpoint written at
    the end of epoch e says ``epoch = e + 1, step = 0``; one written mid-epoch says ``epoch = e``."""
    return state["epoch"] - 1 if state["step"] == 0 else state["epoch"]


def checkpoint_config(state: dict, path: Path | str) -> Config:
    """The config a loaded checkpoint was trained with (``config.from_record``)."""
    try:
        return from_record(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config is not valid ({e})") from None


def member_from_checkpoint(state: dict, member: int = 0, path: Path | str = "checkpoint",
                           model: torch.nn.Module | None = None) -> torch.nn.Module:
    """Cohort member ``member`` of a loaded checkpoint, in eval mode, compressed as it was
    trained (the layers whose weights are stored latent, ``*.parametrizations.weight.original``,
    with the run's ``quant.*``): its weights loaded into ``model`` (a fresh network of your own
    class) or into the built-in network the checkpoint describes."""
    if not 0 <= member < len(state["members"]):
        raise CheckpointError(f"{path} has members 0..{len(state['members']) - 1}, not {member}")
    q = checkpoint_config(state, path).quant
    weights = state["members"][member]
    if model is None:
        model = build_from_header(state["meta"]["model"], path, _stored_bytes(weights))
    latent = sorted({key.split(".parametrizations.")[0] for key in weights
                     if ".parametrizations." in key})
    try:
        if latent:  # quant.scale=auto: each layer's scale as the run chose it
            scale = state["meta"]["quant_scales"] if q.scale == "auto" else q.scale
            quant.compress(model, q.mode, q.delta, False, scale, q.delta_rule, q.delta_per,
                           layers=latent)
        model.load_state_dict(weights)
    except Exception as e:  # any mismatch of untrusted weights
        raise CheckpointError(f"{path}: weights do not fit the described model "
                              f"({first_line(e)})") from None
    return model.eval()


def _plain_state(model: torch.nn.Module) -> dict:
    """``model``'s tensors with its compressed weights baked in (``codes * scale``)."""
    plain = quant.baked(model) if quant.is_compressed(model) else model
    return {k: v.detach().contiguous().cpu() for k, v in plain.state_dict().items()}


def save_network(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """``model`` alone as a checkpoint of one member: its weights (compressed ones baked in),
    ``meta`` and the config in ``meta['config']`` (the defaults where it has none), at epoch 0.
    It loads and evaluates as a run's checkpoint does; it holds no optimizer to resume."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else to_flat(Config())
    save_checkpoint(path, {"config": config, "meta": meta, "epoch": 0, "step": 0,
                           "members": [_plain_state(model)]})


def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """The network alone, for inference: safetensors weights (compressed ones baked in) +
    JSON ``meta`` (``meta['model']`` is its ``models.model_spec``)."""
    header = {"format": MODEL_FORMAT, "meta": json.dumps(meta)}
    save_safetensors(path, _plain_state(model), header)


def read_model_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors model ({first_line(e)})") from None
    if header.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a twinsnn model (format {header.get('format')!r:.80})")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: model header is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: model header is not a JSON object")
    return meta


def load_model(path: Path, model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict]:
    """A saved model in eval mode and its ``meta`` (as ``save_model`` wrote it): the weights
    loaded into ``model`` (a network of your own, as built for training) or, by default,
    into the built-in network the file describes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    meta = read_model_meta(path)
    if model is None:
        model = build_from_header(meta.get("model"), path, path.stat().st_size)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # any mismatch of untrusted weights
        raise CheckpointError(f"{path}: weights do not fit the model "
                              f"({first_line(e)})") from None
    return model.eval(), meta
