"""The files a network is written to and read from: one registry, one writer and one reader
per format.

| name | suffix | holds |
|---|---|---|
| `packed` | `.tnn` | the base network: ternary weights at 2 bits, binary at 1, the rest float32 (`packed`) |
| `safetensors` | `.safetensors` | the base network in float32, compressed weights baked in (a run's `model.safetensors`, `checkpoint.save_model`) |
| `checkpoint` | `.pt` | a training checkpoint, every member of a cohort (`checkpoint`); written from a network: one member, nothing to resume |
| `nir` | `.nir` | a NIR graph with BatchNorm folded, which twinsnn reads back bitwise (`nir`) |
| `nir-portable` | `.nir` | a NIR graph that SpikingJelly, snnTorch and Norse run: one threshold per layer, BatchNorm in the weights, ternary weights as codes x a factor per channel (`portable`) |

A network carries its own description (``structure.SpikingNetwork.meta``: how to rebuild it,
the data it was trained on, its config), which every writer records: a built-in network comes
back from any of its files without ``model=``, and ``twinsnn eval`` scores it on its data. A
network of your own class is recorded by its class name and loads back into a fresh one
(``model=``) from the formats that hold weights by name (``Format.own``). Formats that share a
suffix are told apart by what the file says it is (``Format.claims``). Adding a format is a
writer, a reader and one ``Format`` line in ``FORMATS``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .checkpoint import load_checkpoint, load_model, member_from_checkpoint, save_model
from .checkpoint import save_network
from .errors import CheckpointError, ConfigError, lookup
from .nir import FOLDS, graph_format, read_graph, write_graph
from .nir import FORMAT as NIR_FORMAT
from .packed import export_packed, load_packed
from .portable import FORMAT as PORTABLE_FORMAT
from .portable import read_portable, write_portable
from .models import SHAPE_KEYS
from .structure import SpikingNetwork


@dataclass(frozen=True)
class Format:
    """A file format: ``write(model, path, meta, **options)`` writes a network with its
    JSON-able ``meta``; ``read(path, model, member)`` returns ``(network in eval mode, meta)``.
    ``options``: the keyword options its writer takes; ``own``: it loads into a network of
    your own class (``model=``); ``members``: it holds every member of a cohort;
    ``claims(path)``: whether a file of the suffix is this format's, for suffixes that formats
    share."""

    name: str
    suffix: str
    summary: str
    write: Callable[..., object]
    read: Callable[..., tuple[nn.Module, dict]]
    options: tuple[str, ...] = ()
    own: bool = True
    members: bool = False
    claims: Callable[[Path], bool] | None = None


def _write_nir(model, path, meta, fold: str = "neurons"):
    if fold not in FOLDS:
        raise ConfigError(f"fold must be one of {', '.join(FOLDS)}; got {fold!r}")
    return write_graph(model, meta, path, fold)


def _read_checkpoint(path, model, member):
    state = load_checkpoint(path)
    return member_from_checkpoint(state, member, path, model), state["meta"]


FORMATS = {
    "packed": Format("packed", ".tnn", "ternary weights at 2 bits, binary at 1, the rest "
                     "float32", lambda m, p, meta: export_packed(m, p, meta),
                     lambda p, model, _: load_packed(p, model)),
    "safetensors": Format("safetensors", ".safetensors", "float32 weights, compressed ones "
                          "baked in", lambda m, p, meta: save_model(p, m, meta),
                          lambda p, model, _: load_model(p, model)),
    "checkpoint": Format("checkpoint", ".pt", "a training checkpoint (from a network: one "
                         "member, nothing to resume)", lambda m, p, meta: save_network(p, m, meta),
                         _read_checkpoint, members=True),
    "nir": Format("nir", ".nir", "a NIR graph, BatchNorm folded (fold: into the neurons, "
                  "bitwise, or the weights)",
                  _write_nir, lambda p, model, _: read_graph(p), options=("fold",),
                  own=False, claims=lambda p: graph_format(p) == NIR_FORMAT),
    "nir-portable": Format("nir-portable", ".nir", "a NIR graph that SpikingJelly, snnTorch "
                           "and Norse run (one threshold per layer, BatchNorm in the weights)",
                           lambda m, p, meta: write_portable(m, meta, p),
                           lambda p, model, _: read_portable(p), own=False,
                           claims=lambda p: graph_format(p) == PORTABLE_FORMAT),
}
"""The formats by name; ``twinsnn.export(..., format=name)`` writes one."""
DEFAULT = "packed"  # for a file whose suffix names no format


def format_of(path, existing: bool = True) -> Format:
    """The format of the file at ``path``: the one its suffix names, the default for any other
    suffix. Where several share the suffix: for an ``existing`` file the one that claims it
    (else the first, whose reader says what is wrong), for a file to write the first."""
    path = Path(path)
    candidates = [f for f in FORMATS.values() if f.suffix == path.suffix]
    if len(candidates) > 1 and existing:
        return next((f for f in candidates if f.claims(path)), candidates[0])
    return candidates[0] if candidates else FORMATS[DEFAULT]


def describe(model: nn.Module) -> dict:
    """What a file records about ``model``: its own description (``SpikingNetwork.meta``) for a
    built-in network, else its class (a network of your own, which loads back into one)."""
    meta = getattr(model, "meta", None) if isinstance(model, SpikingNetwork) else None
    if isinstance(meta, dict) and "arch" in meta.get("model", {}):
        return meta
    kind = type(model)
    return {"model": {"class": f"{kind.__module__}.{kind.__qualname__}"}}


def write(model: nn.Module, path, format: str | None = None, meta: dict | None = None,
          **options) -> Path:
    """Write ``model`` to ``path`` in ``format`` (a name in ``FORMATS``; default: the one the
    suffix names, else packed) with ``meta`` (default: ``describe(model)``); ``options`` go to
    the writer (the NIR graph's ``fold``). Returns the path."""
    fmt = format_of(path, False) if format is None else lookup(FORMATS, format, "format")
    unknown = [name for name in options if name not in fmt.options]
    if unknown:
        raise ConfigError(f"the {fmt.name} format takes no option {unknown[0]}"
                          + (f" (it takes {', '.join(fmt.options)})" if fmt.options else ""))
    fmt.write(model, Path(path), describe(model) if meta is None else meta, **options)
    return Path(path)


def read(path, model: nn.Module | None = None, member: int = 0) -> tuple[nn.Module, dict]:
    """``(network in eval mode, meta)`` of the file at ``path``: cohort ``member`` of a
    checkpoint, its weights loaded into ``model`` (a fresh network of your own class) or into
    the built-in network the file describes, which then carries the file's ``meta``."""
    path, fmt = Path(path), format_of(path)
    if model is not None and not fmt.own:
        raise CheckpointError(f"{path}: a {fmt.name} file builds its own network; load it "
                              "without model=")
    if member != 0 and not fmt.members:
        raise CheckpointError(f"{path} holds the base network only; use checkpoint.pt "
                              "for --member")
    net, meta = fmt.read(path, model, member)
    if model is None and isinstance(net, SpikingNetwork):
        # a graph's network is no built-in one: it keeps what its input is, not what built it
        spec = meta.get("model") if isinstance(meta.get("model"), dict) else {}
        net.meta = meta if fmt.own else {**meta, "model": {
            key: spec[key] for key in SHAPE_KEYS if key in spec}}
    return net, meta
