"""Atomic, code-free persistence: training checkpoints and inference models.

A training checkpoint (``checkpoint.pt``) holds every cohort member, the optimizer, the
scheduler and the epoch count; it is read with ``torch.load(weights_only=True)``, which
refuses any pickled object that is not a tensor or plain container, so a crafted file
cannot run code. An inference model (``model.safetensors``) holds the base network only,
as safetensors tensors plus a JSON header describing how to rebuild it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .errors import CheckpointError
from .models import build_model

MODEL_FORMAT = "twinsnn-model/1"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``; the previous file stays
    intact until the new one is complete, and a crash leaves at most a stray temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; all mean "not ours"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable twinsnn checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or not {"members", "config", "meta", "epoch"} <= set(state):
        raise CheckpointError(f"{path}: not a twinsnn training checkpoint (missing members/config)")
    return state


def member_from_checkpoint(state: dict, member: int = 0, path: Path | str = "checkpoint"):
    """Rebuild cohort member ``member`` of a loaded checkpoint, compressed as it was trained
    (only the base is ever compressed)."""
    from . import quant
    from .config import from_flat

    if not 0 <= member < len(state["members"]):
        raise CheckpointError(f"{path} has members 0..{len(state['members']) - 1}, not {member}")
    try:
        model = build_model(**state["meta"]["model"])
        if member == 0:
            quant.set_compression(model, from_flat(state["config"]).quant, state["epoch"])
        model.load_state_dict(state["members"][member])
    except (KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit the described model ({first})") from None
    return model.eval()


def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """The network alone, for inference: safetensors weights + JSON ``meta`` (``meta['model']``
    holds the ``build_model`` arguments)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": MODEL_FORMAT, "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_model_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors model ({e})") from None
    if header.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a twinsnn model (format {header.get('format')!r})")
    try:
        return json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: model header is not valid JSON") from None


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model in eval mode; ``meta`` as written by ``save_model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    meta = read_model_meta(path)
    try:
        model = build_model(**meta["model"])
        model.load_state_dict(load_file(str(path)))
    except (KeyError, TypeError, RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit the described model ({first})") from None
    return model.eval(), meta
