"""Packed export of a (compressed) base model as a single safetensors file.

Tensors, keyed ``<module>.<name>``:

* quantized layers: ``<module>.weight_codes`` uint8, ternary 2 bits per weight (two's
  complement 00 = 0, 01 = +1, 11 = -1) or binary 1 bit per weight (1 = +1, 0 = -1), and with
  scale "layer"/"channel" ``<module>.weight_scale`` float32 ``[1]`` or ``[out]``;
* everything else of the state dict (first conv, output layer, biases, BatchNorm parameters
  and running statistics) as float32; integer buffers (``num_batches_tracked``) keep int64.

The safetensors metadata holds one JSON string under ``"twinsnn"``:
``{"format", "version", "meta": {arch, model kwargs, normalization, data set ...},
"layers": {module: {"mode", "shape", "delta", "delta_rule", "delta_per", "scale",
"threshold"}}}``, where ``threshold`` (ternary only) lists the D of eq. 6 the codes were cut
with: one value, or one per output channel.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .checkpoint import build_from_header
from .files import first_line, save_safetensors
from .errors import CheckpointError
from .quant import (SYNAPSES, pack_binary, pack_ternary, quant_codes, quant_scale,
                    quantizer, unpack_binary, unpack_ternary)

FORMAT = "twinsnn-packed"
VERSION = 1
METADATA_KEY = "twinsnn"
CODE_BITS = {"ternary": 2, "binary": 1}
MAX_EXPANSION = 32  # a stored weight takes at least 1 bit; rebuilt, 32


def _packed_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The file's tensors and its per-layer header entries for ``model``."""
    tensors, layers = {}, {}
    for name, module in model.named_modules():
        q = quantizer(module)
        if q is None:
            continue
        latent = module.parametrizations.weight.original.detach().cpu()
        threshold = q.threshold(latent)
        codes = quant_codes(latent, q.mode, threshold)
        pack = pack_ternary if q.mode == "ternary" else pack_binary
        tensors[f"{name}.weight_codes"] = pack(codes.to(torch.int8))
        factor = quant_scale(latent, codes, q.scale)
        if factor is not None:
            tensors[f"{name}.weight_scale"] = factor.reshape(-1).float().contiguous()
        layers[name] = {"mode": q.mode, "shape": list(latent.shape), "delta": q.delta,
                        "delta_rule": q.delta_rule, "delta_per": q.delta_per,
                        "scale": q.scale}
        if q.mode == "ternary":  # the D of eq. 6 the codes were cut with, per layer or channel
            layers[name]["threshold"] = ([threshold] if isinstance(threshold, float)
                                         else threshold.reshape(-1).tolist())
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        value = value.detach().cpu()
        tensors[key] = (value.float() if value.is_floating_point() else value).contiguous()
    return tensors, layers


def export_packed(model: nn.Module, path, meta: dict | None = None) -> Path:
    """Write ``model`` (weights and BatchNorm state, no optimizer) with its JSON-able ``meta``
    to ``path`` atomically; returns the path. A built-in network's ``meta`` holds its
    ``models.model_spec`` (at its top level or under ``meta["model"]``), so that the file
    rebuilds it; a network of your own class loads back into one (``load_packed(path,
    model=...)``)."""
    path = Path(path)
    tensors, layers = _packed_tensors(model)
    header = {"format": FORMAT, "version": VERSION, "meta": meta or {}, "layers": layers}
    save_safetensors(path, tensors, {METADATA_KEY: json.dumps(header)})
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the parsed JSON header of a packed file; ``CheckpointError`` otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: no '{METADATA_KEY}' header; not a twinsnn export")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({first_line(e)})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: header is not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {header.get('version')!r:.40} "
                              f"is not supported (expected {VERSION})")
    if not isinstance(header.get("meta"), dict) or not isinstance(header.get("layers"), dict):
        raise CheckpointError(f"{path}: header lacks its 'meta' or 'layers' object")
    return tensors, header


def _model_spec(meta: dict) -> dict:
    """The ``models.model_spec`` in ``meta``: ``meta["model"]`` if that is a dict, else ``meta``
    itself."""
    return meta["model"] if isinstance(meta.get("model"), dict) else meta


def _build(path: Path, meta: dict) -> nn.Module:
    return build_from_header(_model_spec(meta), path, MAX_EXPANSION * path.stat().st_size)


def _weight(path: Path, name: str, entry: dict, module: nn.Module,
            tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Unpack the quantized weight of layer ``name``: ``codes * scale`` in float32."""
    where = f"{path}: layer {name!r}"
    if not isinstance(module, SYNAPSES):
        raise CheckpointError(f"{where} is not a conv or linear layer of the model")
    if not isinstance(entry, dict) or entry.get("mode") not in CODE_BITS:
        raise CheckpointError(f"{where} has no valid mode")
    shape = tuple(module.weight.shape)
    if entry.get("shape") != list(shape):
        raise CheckpointError(f"{where} has shape {entry.get('shape')!s:.80}, "
                              f"the model {list(shape)}")
    packed = tensors.pop(f"{name}.weight_codes", None)
    if packed is None:
        raise CheckpointError(f"{where}: tensor 'weight_codes' is missing")
    unpack = unpack_ternary if entry["mode"] == "ternary" else unpack_binary
    try:
        codes = unpack(packed, math.prod(shape)).view(shape).float()
    except ValueError as e:
        raise CheckpointError(f"{where}: bad packed codes ({e})") from None
    scale = entry.get("scale", "none")
    factor = tensors.pop(f"{name}.weight_scale", None)
    if scale == "none" and factor is None:
        return codes
    sizes = {"layer": 1, "channel": shape[0]}
    if scale not in sizes or factor is None or factor.dtype != torch.float32 \
            or tuple(factor.shape) != (sizes[scale],):
        raise CheckpointError(f"{where}: scale {scale!r} does not match its 'weight_scale'")
    return codes * factor.view(-1, *[1] * (len(shape) - 1))


def _rebuild(path: Path, tensors: dict[str, torch.Tensor], header: dict,
             model: nn.Module | None = None) -> nn.Module:
    """``model`` (by default the one described by ``header``) holding the file's ``tensors``,
    in eval mode."""
    tensors = dict(tensors)
    model = _build(path, header["meta"]) if model is None else model
    modules = dict(model.named_modules())
    state = {}
    for name, entry in header["layers"].items():
        if name not in modules:
            raise CheckpointError(f"{path}: layer {name!r} is not in the model")
        state[f"{name}.weight"] = _weight(path, name, entry, modules[name], tensors)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in tensors]
    unexpected = [k for k in tensors if k not in expected or k in state]
    if missing or unexpected:
        problems = [f"{what} {keys[:3]}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{path}: tensors do not fit the model in its header: "
                              + ", ".join(problems))
    for key, value in tensors.items():
        want = expected[key]
        if value.shape != want.shape or value.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor {key!r} is {value.dtype} "
                                  f"{list(value.shape)}, the model expects {want.dtype} "
                                  f"{list(want.shape)}")
        state[key] = value
    model.load_state_dict(state)
    return model.eval()


def load_packed(path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """The exported network: ``model`` (a fresh network of your own class, uncompressed) or
    by default the built-in one the file describes, in eval mode, its quantized weights the
    exact ``codes * scale`` floats. Returns ``(model, meta)``."""
    path = Path(path)
    tensors, header = _read(path)
    if model is not None and any(quantizer(m) is not None for m in model.modules()):
        raise CheckpointError(f"{path}: load into a fresh, uncompressed network")
    return _rebuild(path, tensors, header, model), header["meta"]


class SizeRow(NamedTuple):
    layer: str  # module name
    mode: str  # ternary | binary | float32
    params: int  # values stored for the layer (weights, biases, norm statistics)
    bits: float  # bits per value on disk
    bytes: int


def size_report(source) -> list[SizeRow]:
    """Per-module storage of an exported file (``source`` a path) or of what ``export_packed``
    would write for a model: one ``SizeRow`` per stored module, in model order."""
    if isinstance(source, nn.Module):
        model = source
        tensors, layers = _packed_tensors(model)
    else:
        tensors, header = _read(Path(source))
        model = _rebuild(Path(source), tensors, header)  # validates every tensor
        layers = header["layers"]
    params, nbytes = {}, {}
    for key, value in tensors.items():
        module, name = key.rsplit(".", 1)
        counted = 0 if name == "weight_scale" else value.numel()
        if name == "weight_codes":
            counted = math.prod(layers[module]["shape"])
        params[module] = params.get(module, 0) + counted
        nbytes[module] = nbytes.get(module, 0) + value.numel() * value.element_size()
    return [SizeRow(m, layers[m]["mode"] if m in layers else "float32", params[m],
                    8 * nbytes[m] / max(params[m], 1), nbytes[m])
            for m, _ in model.named_modules() if m in params]


def format_size_report(rows: list[SizeRow]) -> str:
    """Text table of ``rows`` with totals and the ratio to storing every value as float32."""
    params = sum(r.params for r in rows)
    nbytes = sum(r.bytes for r in rows)
    width = max([len(r.layer) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'mode':<8} {'params':>10} {'bits':>6} {'bytes':>10}"]
    lines += [f"{r.layer:<{width}}  {r.mode:<8} {r.params:>10} {r.bits:>6.2f} {r.bytes:>10}"
              for r in rows]
    lines.append(f"{'total':<{width}}  {'':<8} {params:>10} "
                 f"{8 * nbytes / max(params, 1):>6.2f} {nbytes:>10}")
    lines.append(f"float32: {4 * params} bytes; packed is {nbytes / max(4 * params, 1):.1%} "
                 f"of it ({4 * params / max(nbytes, 1):.1f}x smaller)")
    return "\n".join(lines)
