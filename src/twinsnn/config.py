"""Run configuration: frozen dataclasses, YAML presets, ``key=value`` overrides.

A config is built from a preset name (``configs/<name>.yaml`` inside the package) or a YAML
path, then ``--set`` overrides. Keys are ``section.field`` or, where unambiguous, the bare
field name (``alpha=1e-4`` means ``loss.alpha``). Unknown keys, values of the wrong type and
out of range raise ``ConfigError``. This module imports none of what the config names: the
keys that name a data set, an architecture, a neuron, a strategy or another alternative are
checked against their modules by ``choices.check_choices``, where a config is built from.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | cifar10-dvs |
    #   image-folder (<split>/<class>/<image>, a folder or an archive) | cifar10-jpeg
    dir: typing.Optional[str] = None  # data folder (or archive); else $TWINSNN_DATA, else
    #   system locations
    download: bool = False  # fetch from the official source when not found locally
    val_size: int = 5000  # samples carved out of the training set for model selection
    val_seed: int = 0  # seed of that split (fixed, so every run validates on the same set)
    train_limit: typing.Optional[int] = None  # train on the first N samples only (quick trials)
    train_size: typing.Optional[int] = None  # train on a stratified random subset of N samples
    train_subset_seed: int = 0  # seed of that subset (fixed: the same for every seed and config)
    verify: bool = True  # check the official checksums of known data files
    augment: bool = True  # paper 5.1.1 augmentation on training batches
    resolution: int = 48  # event data: frames are resized to resolution x resolution
    split_seed: int = 0  # event data: seed of the per-class 9:1 train/test split
    cache_dir: typing.Optional[str] = None  # where decoded samples are cached (event frames,
    #   image folders); default <data folder>/cache, else ~/.cache/twinsnn


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "cifarnet"  # models.MODELS
    width: float = 1.0  # multiplies every channel and hidden count
    timesteps: int = 5  # T
    dropout: float = 0.2  # on the FC layers, one mask for all timesteps
    fc_norm: str = "batchnorm"  # batchnorm | none: normalization after each hidden FC
    neuron: str = "lif"  # neurons.NEURONS: lif = eq. 1; relu = a non-spiking unit (ANN at T=1)
    decay: float = 0.5  # LIF leak a in eq. 1
    threshold: float = 1.0  # LIF firing threshold theta in eq. 1
    surrogate: str = "boxcar"  # neurons.SURROGATES, ds/du in the backward: boxcar = eq. 4
    readout_decay: float = 0.5  # leak of the non-spiking output potential; 0 = sum of currents
    encoding: str = "none"  # your own network's input: none (as the data gives it) | repeat
    #   (a static batch [B, ...] repeated over model.timesteps: [T, B, ...])


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 250  # passes over the training set
    batch_size: int = 256  # samples per optimizer step (the global batch under torchrun)
    eval_batch_size: int = 1000  # samples per forward in evaluation (memory, not numbers)
    lr: float = 0.01  # Adam
    lr_gamma: float = 0.928  # StepLR factor
    lr_step_size: int = 1  # StepLR period, in units of lr_step_unit
    lr_step_unit: str = "epoch"  # epoch | batch
    seed: int = 0  # of the base's init, order, augmentation, dropout; twins derive theirs
    device: str = "auto"  # auto | cpu | cuda
    deterministic: typing.Optional[bool] = None  # None: on for CPU, off for CUDA
    eval_test: bool = False  # also report test accuracy every epoch (never used for choices)
    val_every: int = 1  # validate after every N-th epoch and after the last one
    compile: bool = True  # run the LIF loops through torch.compile (same numbers, faster)
    fuse_norm: bool = True  # BatchNorm + LIF as one autograd node (neurons.batchnorm_lif)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU)
    cuda_graphs: bool = False  # CUDA, one process: replay the step as a CUDA graph (graphs.py)
    precision: str = "fp32"  # fp32 | bf16: autocast of the training forward (docs/guide.md, "bf16")
    sync_batchnorm: bool = True  # torchrun: BatchNorm statistics over the global batch
    tensorboard: bool = False  # also write each epoch's scalars as TensorBoard event files
    #   in <run>/tensorboard (pip install 'twinsnn[tensorboard]')


@dataclass(frozen=True)
class LossConfig:
    strategy: str = "single"  # strategies.STRATEGIES: single | tna | kd | kd+ce | dml
    members: int = 2  # networks trained together by tna and dml (2 = base + twin)
    alpha: float = 1e-4  # weight of the matching term: eq. 5's squared logit differences
    #   (tna, kd, kd+ce) or dml's KL term (the DML paper's weight: 1)
    alpha_compressed: typing.Optional[float] = None  # alpha from quant.start_epoch on (None: alpha)
    reduction: str = "sum"  # sum | batchmean | mean, of the squared logit differences
    match: str = "logits"  # logits (summed over T) | potentials (per timestep)
    teacher: typing.Optional[str] = None  # kd, kd+ce: checkpoint of the frozen teacher
    temperature: float = 1.0  # dml: softmax temperature of the KL term (the paper's: 1)


@dataclass(frozen=True)
class QuantConfig:
    mode: str = "none"  # none | ternary | binary
    start_epoch: int = 150  # first epoch (0-based) trained with compressed weights
    delta: float = 0.1  # ternary threshold D of eq. 6 (absolute), or its factor (mean_abs)
    delta_rule: str = "absolute"  # absolute: D = delta (eq. 6) | mean_abs: D = delta * mean|W|
    delta_per: str = "layer"  # mean_abs: one D per layer | per output channel
    full_precision_ends: bool = True  # keep the first and the last conv/linear layer in fp32
    layers: typing.Optional[str] = None  # compress only these: names or patterns, "fcs.*,convs.2"
    scale: str = "auto"  # auto: none where a normalization follows the layer, layer where none
    #   does (safeguards.py) | none (paper: codes only) | layer | channel: fp scale beside the codes
    lr_at_switch: typing.Optional[float] = None  # set the lr to this when compression starts


@dataclass(frozen=True)
class Config:
    name: str = "run"  # run folder under out_dir
    out_dir: str = "runs"  # where run folders go
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


POSITIVE = ("model.width", "model.timesteps", "model.threshold", "train.epochs",
            "train.batch_size", "train.eval_batch_size", "train.lr", "train.lr_gamma",
            "train.lr_step_size", "train.val_every", "loss.members", "loss.temperature",
            "data.resolution")
UNIT_INTERVAL = ("model.decay", "model.readout_decay")  # [0, 1]
NON_NEGATIVE = ("loss.alpha", "loss.alpha_compressed", "quant.delta", "quant.start_epoch",
                "data.val_size")
POSITIVE_OR_NONE = ("data.train_limit", "data.train_size", "quant.lr_at_switch")
MAX_YAML_BYTES = 64 << 10  # a config file is a few hundred bytes


@functools.cache
def leaf_keys() -> dict[str, type]:
    """Every settable key, ``section.field`` (or top-level field), with its type (a cached
    dict: read it, do not change it)."""
    hints = typing.get_type_hints(Config)
    keys = {}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            sub = typing.get_type_hints(hints[f.name])
            keys.update({f"{f.name}.{g.name}": sub[g.name] for g in dataclasses.fields(hints[f.name])})
        else:
            keys[f.name] = hints[f.name]
    return keys


def _show(value) -> str:
    """A config value for a message, bounded in length and effort: YAML aliases can make a
    small document hold a structure far too large to print."""
    if isinstance(value, (bool, float, str, type(None))) or (
            isinstance(value, int) and value.bit_length() <= 64):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a value of type {type(value).__name__}"


def resolve_key(key: str) -> str:
    """``alpha`` -> ``loss.alpha``; full keys pass through; anything else is an error."""
    keys = leaf_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"config key {_show(key)} is ambiguous; use one of {matches}")
    names = list(keys) + sorted({k.split(".")[-1] for k in keys})
    near = difflib.get_close_matches(str(key), names, 3) if isinstance(key, str) else []
    hint = f"did you mean {' or '.join(near)}?" if near else "valid keys: " + ", ".join(keys)
    raise ConfigError(f"unknown config key {_show(key)}; {hint} "
                      "(`twinsnn config show --explain` lists them)")


def _coerce(key: str, value, kind):
    origin_args = typing.get_args(kind)
    optional = type(None) in origin_args
    base = next((a for a in origin_args if a is not type(None)), kind)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} may not be empty")
    if isinstance(value, str) and base in (int, float):
        try:  # YAML reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if -2**63 <= value < 2**63:
                return value
            raise ConfigError(f"{key} must fit in 64 bits, got {_show(value)}")
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                pass
    elif base is str:
        if isinstance(value, (str, float)) or (isinstance(value, int) and
                                                not isinstance(value, bool)
                                                and value.bit_length() <= 64):
            return str(value)
    raise ConfigError(f"{key} must be {base.__name__}, got {_show(value)}")


def _check(key: str, value) -> None:
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in UNIT_INTERVAL and not 0 <= value <= 1:
        raise ConfigError(f"{key} must be in [0, 1], got {value!r}")
    if key in NON_NEGATIVE and value is not None and value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if key in POSITIVE_OR_NONE and value is not None and not value > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key == "model.dropout" and not 0 <= value < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {value!r}")


def coerce(key: str, value):
    """``value`` converted to the type of config key ``key`` and range-checked (a name is
    checked by ``choices.check_choices``)."""
    value = _coerce(key, value, leaf_keys()[key])
    _check(key, value)
    return value


# Keys whose default has changed, at the value that records lacking them (written before the
# key existed) ran with.
RECORDED_BEFORE = {"train.fuse_norm": False, "quant.scale": "none"}


def record_defaults() -> dict:
    """Flat values for the keys a record (a checkpoint's or a run's config) lacks: the
    behaviour it ran with, ``RECORDED_BEFORE`` or the default."""
    return {**to_flat(Config()), **RECORDED_BEFORE}


def from_record(flat: dict) -> Config:
    """The ``Config`` a recorded flat config ran with (``record_defaults`` for keys it lacks)."""
    return from_flat({**record_defaults(), **flat})


def from_flat(flat: dict) -> Config:
    """Build a validated ``Config`` from ``{"section.field": value}`` (missing keys: defaults)."""
    sections: dict[str, dict] = {}
    top = {}
    for raw_key, value in flat.items():
        key = resolve_key(raw_key)
        value = coerce(key, value)
        if "." in key:
            section, name = key.split(".")
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    hints = typing.get_type_hints(Config)
    built = {s: hints[s](**vals) for s, vals in sections.items()}
    cfg = Config(**top, **built)
    if cfg.data.train_size is not None and cfg.data.train_limit is not None:
        raise ConfigError("set data.train_size (a stratified random subset) or data.train_limit "
                          "(the first N samples), not both")
    if cfg.loss.alpha_compressed is not None and cfg.quant.mode == "none":
        raise ConfigError("loss.alpha_compressed weighs the matching term while the base is "
                          "compressed; set quant.mode (ternary or binary) or leave it unset")
    return cfg


def to_flat(cfg: Config) -> dict:
    """``{"section.field": value}`` for every key; ``from_flat(to_flat(c)) == c``."""
    flat = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
        else:
            flat[f.name] = value
    return flat


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _flatten_yaml(tree: dict, source: str) -> dict:
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of config sections, got {type(tree).__name__}")
    flat = {}
    for key, value in tree.items():
        for k in (key, *(value if isinstance(value, dict) else ())):
            if not isinstance(k, str):
                raise ConfigError(f"{source}: config keys are names, not {_show(k)}")
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("twinsnn.configs").iterdir()
                  if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The first comment line of a preset's YAML (what it is for)."""
    text = resources.files("twinsnn.configs").joinpath(f"{name}.yaml").read_text()
    first = next((line for line in text.splitlines() if line.startswith("#")), "# ")
    return first.lstrip("# ").strip()


@functools.cache
def key_meanings() -> dict[str, str]:
    """``{key: its meaning}``, from the comments beside the config dataclasses' fields (a
    comment line right under a field continues it)."""
    meanings = {}
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig),
                         ("loss", LossConfig), ("quant", QuantConfig), ("", Config)):
        field = None
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
            if match and not line.strip().startswith("#"):
                field = f"{section}.{match[1]}" if section else match[1]
                meanings[field] = match[2] or ""
            elif field and line.strip().startswith("#"):
                meanings[field] += " " + line.strip().lstrip("#").strip()
    return {k: v for k, v in meanings.items() if k in leaf_keys()}


def explain(cfg: Config) -> str:
    """Every key of ``cfg``, its value and its meaning, one per line."""
    flat, meanings = to_flat(cfg), key_meanings()
    width = max(len(f"{k} = {v}") for k, v in flat.items())
    return "".join(f"{f'{k} = {v}':<{width}}  # {meanings.get(k, '')}\n" for k, v in flat.items())


def read_yaml(preset_or_path: str, _chain: tuple = ()) -> dict:
    """A preset name or a YAML file path -> flat dict of its keys. A top-level
    ``extends: <preset or file>`` loads that first and overlays this file's keys."""
    path = Path(preset_or_path)
    if preset_or_path in preset_names():
        text = resources.files("twinsnn.configs").joinpath(f"{preset_or_path}.yaml").read_text()
        source = f"preset {preset_or_path}"
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        source = str(path)
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_YAML_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"{source}: cannot read ({e.strerror})") from None
        if len(text) > MAX_YAML_BYTES:
            raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES} bytes; not a config file")
    else:
        near = difflib.get_close_matches(preset_or_path, preset_names(), 1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"no preset or YAML file {preset_or_path!r}; {hint}presets: "
                          f"{', '.join(preset_names())}")
    try:  # safe_load builds only plain data: tags such as !!python/object are refused
        tree = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{source}: not valid YAML ({first[:200]})") from None
    flat = _flatten_yaml(tree, source)
    parent = flat.pop("extends", None)
    if parent is None:
        return flat
    if not isinstance(parent, str) or parent in _chain or len(_chain) > 8:
        raise ConfigError(f"{source}: 'extends' must name another preset or file, without cycles")
    return {**read_yaml(parent, _chain + (preset_or_path,)), **flat}


def parse_overrides(pairs: list[str]) -> dict:
    """``["lr=0.01", "loss.alpha=1e-4"]`` -> ``{"lr": 0.01, ...}``; values parsed as YAML."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError):
            out[key.strip()] = value
    return out


def load_config(preset_or_path: str | None = None, overrides: list[str] | dict = ()) -> Config:
    """Preset or YAML, then overrides (``key=value`` strings or a dict) -> validated Config."""
    flat = read_yaml(preset_or_path) if preset_or_path else {}
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides)
    merged = {resolve_key(k): v for k, v in flat.items()}
    merged.update({resolve_key(k): v for k, v in extra.items()})
    return from_flat(merged)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
