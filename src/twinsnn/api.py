"""Training any network with twin network augmentation and delayed ternary compression.

``fit`` is the one trainer: the command line and the presets call it too. Its model is a
factory (a function returning a fresh ``nn.Module``: a SpikingJelly, snnTorch, Norse or plain
PyTorch network) or the name of a built-in architecture; its data a map-style ``Dataset``
or a ``DataLoader`` of ``(x, y)`` batches, or the name of a built-in data set. Settings are
config keys by their bare names (``epochs=2``, ``alpha=1e-5``, ``mode="ternary"``), on top
of ``config`` (a ``Config``, a preset name or YAML file, or a dict of keys)::

    run = twinsnn.fit(make_net, train_set, val=val_set, strategy="tna", alpha=1e-5,
                      mode="ternary", start_epoch=1, delta_rule="mean_abs", delta=0.5,
                      epochs=2, out_dir="runs", name="mine")
    twinsnn.export(run.model, "runs/mine.tnn")
    net = twinsnn.load("runs/mine.tnn", model=make_net())

The model contract: ``model(x)`` returns logits ``[B, K]`` or per-timestep outputs
``[T, B, K]`` (logits: their sum over T); ``x`` is what the data gives, or, with
``encoding="repeat"``, a static batch repeated over ``timesteps`` (``[T, B, ...]``).
Neuron state is cleared before every batch by ``reset`` (``neurons.reset_states``:
SpikingJelly and snnTorch neurons as they are).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import load_model, parse_spec
from .choices import check_choices
from .config import Config, from_flat, leaf_keys, load_config, resolve_key, to_flat
from .data import build_data, tensor_datasets
from .data.feeds import DatasetFeed, LoaderFeed, TensorFeed
from .data.splits import Dataset
from .data.transforms import Preprocess
from .distributed import join, leave, synchronize_batchnorm
from .errors import ConfigError, TwinsnnError
from . import classify as images, evaluation, formats, inference
from .losses import logits_of
from .metrics import ACCURACY, Results, member_key, renamed
from .models import build_model, model_spec
from .neurons import reset_states
from .quant import Selector
from .run import RunFolder
from .runtime import configure, resolve_device
from .safeguards import chosen_scales_line, switch_warning
from .strategies import Strategy, check_strategy, from_config, registered_name
from .train import Parts, build_trainer, train


@dataclass
class Run:
    """A finished (or stopped) run: its folder, config, trained networks (base first; the
    base compressed where the run compressed it) and last epoch's metrics; ``complete``
    when every epoch was trained (and ``model.safetensors`` written)."""

    dir: Path
    config: Config
    members: list[nn.Module]
    record: dict
    complete: bool

    @property
    def model(self) -> nn.Module:
        """The base network, the one a run is for (twins are discarded after training)."""
        return self.members[0]

    @property
    def metrics(self) -> list[dict]:
        """Every epoch's record, as ``metrics.jsonl`` holds them (rank 0 writes them), its
        keys spelled as today (``metrics.renamed``)."""
        lines = (self.dir / "metrics.jsonl").read_text().splitlines()
        return [Results(renamed(json.loads(line))) for line in lines if line.strip()]


def make_config(config: Config | str | dict | None = None, **settings) -> Config:
    """A ``Config`` from ``config`` (a ``Config``, a preset name or YAML path, a dict of keys
    or None for the defaults) with ``settings`` (bare or full key names) on top."""
    if isinstance(config, Config):
        flat = to_flat(config)
    elif isinstance(config, (str, dict)) or config is None:
        flat = to_flat(load_config(config if isinstance(config, str) else None,
                                   config if isinstance(config, dict) else {}))
    else:
        raise ConfigError(f"config must be a Config, a preset name, a YAML path or a dict, "
                          f"not a {type(config).__name__}")
    return from_flat({**flat, **{resolve_key(k): v for k, v in settings.items()}})


def _repeat(cfg: Config) -> int | None:
    return cfg.model.timesteps if cfg.model.encoding == "repeat" else None


def _user_feed(source, device, cfg: Config, workers: int, name: str):
    if source is None:
        return None
    repeat = _repeat(cfg)
    if isinstance(source, DataLoader):
        return LoaderFeed(source, device, cfg.train.channels_last, name, repeat)
    return DatasetFeed(source, device, workers, cfg.train.channels_last, name, repeat)


def _first_batch(feed) -> torch.Tensor:
    """The first sample of a user's feed as a batch of one, as the network takes it."""
    x, _ = next(iter(feed.in_order(1)))
    return x


def _builtin_meta(cfg: Config, classes: int, channels: int, size, data: dict) -> dict:
    return {"model": model_spec(cfg.model, classes, channels, size), "data": data,
            "config": to_flat(cfg)}


def _parts(model, data, val, test, cfg: Config, device, classes, workers) -> tuple[Parts, dict]:
    """The ``Parts`` of a run (factory, feeds and meta) and its split record."""
    if data is None or isinstance(data, str):  # a built-in data set, on the device
        splits = build_data(cfg.data, cfg.model.timesteps)
        if val is not None or test is not None:
            raise ConfigError("val= and test= go with a Dataset or DataLoader of your own; a "
                              "built-in data set brings its own validation and test splits")
        train_feed = TensorFeed(Dataset(splits.train.x.to(device), splits.train.y.to(device)),
                                Preprocess(splits, cfg.data.augment, cfg.train.channels_last),
                                device, _repeat(cfg))
        plain = Preprocess(splits, False, cfg.train.channels_last)
        evals = {"val": TensorFeed(splits.val, plain, device, _repeat(cfg))}
        if cfg.train.eval_test:
            evals["test"] = TensorFeed(splits.test, plain, device, _repeat(cfg))
        shape = (splits.num_classes, splits.in_channels, splits.image_size)
        data_meta = {"name": splits.name, "mean": list(splits.mean), "std": list(splits.std)}
        if "classes" in splits.split:  # named by the data's own files (an image folder)
            data_meta["classes"] = splits.split["classes"]
        split = splits.split
    else:
        train_feed = _user_feed(data, device, cfg, workers, "the training data")
        evals = {"val": _user_feed(val, device, cfg, workers, "the validation data")}
        if test is not None and cfg.train.eval_test:
            evals["test"] = _user_feed(test, device, cfg, workers, "the test data")
        shape, data_meta = None, {"name": type(data).__name__, "mean": None, "std": None}
        split = {"train_size": len(train_feed),
                 "val_size": len(evals["val"]) if evals["val"] is not None else 0}
    if model is None or isinstance(model, str):  # a built-in architecture
        if shape is None:
            if classes is None:
                raise ConfigError("a built-in architecture on data of your own needs the "
                                  "number of classes: fit(..., num_classes=K)")
            sample = _first_batch(train_feed)[0]
            shape = (classes, sample.shape[-3], tuple(sample.shape[-2:]))
        factory = lambda: build_model(cfg.model, *shape)  # noqa: E731
        return Parts(factory, train_feed, evals, meta=_builtin_meta(cfg, *shape, data_meta)), split
    if not callable(model) or isinstance(model, nn.Module):
        raise TwinsnnError("model= takes a function that builds a fresh network (e.g. "
                           "lambda: MyNet()), so that every member starts from its own "
                           f"initialization; got {type(model).__name__}")
    meta = {"model": {"class": None}, "data": data_meta, "config": to_flat(cfg)}
    return Parts(model, train_feed, evals, meta=meta), split


def _teacher(cfg: Config, strategy: Strategy, factory, meta: dict,
             given: nn.Module | None) -> nn.Module | None:
    """The frozen network a strategy learns from: ``given``, or ``loss.teacher`` loaded into
    a network of the student's kind (built-in: checked to be the same architecture)."""
    if given is not None or not strategy.needs_teacher or not cfg.loss.teacher:
        return given
    builtin = "arch" in meta["model"]
    teacher, their = load_model(Path(cfg.loss.teacher), None if builtin else factory())
    if builtin and parse_spec(their.get("model")) != parse_spec(meta["model"]):
        raise ConfigError(f"teacher {cfg.loss.teacher} is a different network "
                          f"({their.get('model')}) than the student ({meta['model']})")
    return teacher


RENAMED = {"classes": "num_classes", "workers": "num_workers"}  # fit's old keywords, for a release


def _renamed(settings: dict, given: dict) -> dict:
    """``given`` (``{new keyword: value}``) with the values ``settings`` holds under the old
    keywords (``RENAMED``) moved there, each with a ``DeprecationWarning``."""
    for old, new in RENAMED.items():
        if old in settings:
            warnings.warn(f"twinsnn.fit({old}=...) is spelled {new}= now; {old}= goes in the "
                          "next release", DeprecationWarning, stacklevel=3)
            if given[new] is not None:
                raise ConfigError(f"fit got both {old}= and {new}=; pass {new}= alone")
            given[new] = settings.pop(old)
    return given


def _strategy(cfg: Config, strategy: Strategy | str | None,
              settings: dict) -> tuple[Config, Strategy]:
    """The config and the strategy a run trains with: ``strategy`` (or ``loss.strategy``)
    by name, built from the ``loss.*`` keys; or an object, as it is, whose class, when
    registered, is written into the config with the settings that are ``loss.*`` keys."""
    if strategy is None or isinstance(strategy, str):
        if strategy is not None:
            cfg = from_flat({**to_flat(cfg), "loss.strategy": strategy})
        return cfg, from_config(cfg.loss)
    strategy = check_strategy(strategy)
    given = sorted(k for k in map(resolve_key, settings) if k.startswith("loss.")
                   and k != "loss.teacher")
    if given:
        raise ConfigError(f"{', '.join(given)}: with strategy= an object, its settings go to "
                          f"its constructor ({type(strategy).__name__}(...)), not to fit")
    name = registered_name(strategy)
    if name is not None:
        keys = {f"loss.{k}": v for k, v in strategy.settings().items()
                if f"loss.{k}" in leaf_keys()}
        cfg = from_flat({**to_flat(cfg), "loss.strategy": name, **keys})
    return cfg, strategy


def _described(strategy: Strategy) -> dict:
    """The strategy as ``run.json`` records it: its class and settings (JSON values; any
    other as its ``repr``)."""
    kind = type(strategy)
    plain = (bool, int, float, str, type(None))
    return {"class": f"{kind.__module__}.{kind.__qualname__}",
            "settings": {k: v if isinstance(v, plain) else repr(v)
                         for k, v in strategy.settings().items()}}


def _watch_switch(cfg: Config, run: RunFolder, cohort,
                  then: Callable[[dict], bool | None] | None) -> Callable[[dict], bool | None]:
    """``on_epoch_end`` that first checks the switch: if the base's validation accuracy fell
    by more than a few points from the epoch before compression to the first compressed
    one, it says so on stderr and in ``run.json`` (``warnings``), naming the likely cause."""
    def check(record: dict) -> bool | None:
        key = member_key("val", ACCURACY)
        if run.writer and record["epoch"] == cfg.quant.start_epoch > 0 and key in record:
            lines = run.metrics.read_text().splitlines()
            before = [r for r in map(renamed, map(json.loads, lines))
                      if r["epoch"] == record["epoch"] - 1 and key in r]
            message = before and switch_warning(before[-1][key], record[key],
                                                cohort.members[0], cohort.scales,
                                                cohort.normalized)
            if message:
                print(f"warning: {message}", file=sys.stderr)
                run.note("warnings", message)
        return then(record) if then is not None else None
    return check


def fit(model: Callable[[], nn.Module] | str | None = None, data=None, *, val=None, test=None,
        config: Config | str | dict | None = None, strategy: Strategy | str | None = None,
        layers: Selector = None, teacher: nn.Module | None = None,
        reset: Callable[[nn.Module], None] = reset_states, num_classes: int | None = None,
        num_workers: int | None = None, resume: bool = False,
        branch_from: Path | str | None = None, progress: bool = True,
        on_epoch_end: Callable[[dict], bool | None] | None = None, **settings) -> Run:
    """Train as the config says (module docstring) and return the ``Run``.

    ``model``: a factory of fresh networks, or a built-in architecture's name (default: the
    config's ``model.arch``). ``data``: a map-style ``Dataset`` or ``DataLoader`` of
    ``(x, y)``, with ``val`` and ``test`` alike (test is evaluated only with
    ``eval_test=True``), or a built-in data set's name (default: the config's ``data.name``;
    it brings its validation and test splits). ``strategy``: a name of
    ``strategies.STRATEGIES`` (default: ``loss.strategy``; its settings are the ``loss.*``
    keys) or a ``strategies.Strategy`` object, of a class of one's own too (its settings are
    its own). ``layers``: which layers compression takes
    (``quant.select_layers``: names, patterns, types or a predicate; default all conv and
    linear layers but the first and the last). ``teacher``: the frozen network of ``kd`` and
    ``kd+ce`` (default: ``loss.teacher`` loaded). ``reset``: clears a network's state before
    each batch. ``num_classes``: the class count, for a built-in architecture on data of
    your own. ``num_workers``: DataLoader processes for a ``Dataset`` (default 0; the old
    spellings ``classes=`` and ``workers=`` work until the next release, with a
    ``DeprecationWarning``). ``resume``: continue the run in
    its folder; ``branch_from``: start from another run's end-of-epoch checkpoint
    (``run.check_branch``). ``on_epoch_end(record)``: called with each epoch's metrics once
    they are saved; a true return stops the run (``resume=True`` continues it).

    Writes ``<out_dir>/<name>/`` (``run.RunFolder``); SIGINT/SIGTERM stop it cleanly when
    called in the main thread; under ``torchrun`` it trains data-parallel, rank 0 writing.
    Bad input raises ``TwinsnnError`` with a one-line message.
    """
    renamed = _renamed(settings, {"num_classes": num_classes, "num_workers": num_workers})
    classes, workers = renamed["num_classes"], renamed["num_workers"] or 0
    cfg, strategy = _strategy(make_config(config, **settings), strategy, settings)
    if isinstance(model, str):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=model))
    if isinstance(data, str):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=data))
    cfg = check_choices(cfg)  # the names, against the registries as they are now
    world = join(resolve_device(cfg.train.device))
    run, cohort = RunFolder(cfg, world.writer), None
    try:
        source = world.agree(run.check, resume, branch_from)
        device, deterministic = configure(cfg.train)
        device = world.device(device)
        parts, split = _parts(model, data, val, test, cfg, device, classes, workers)
        parts.strategy = strategy
        parts.teacher = _teacher(cfg, strategy, parts.factory, parts.meta, teacher)
        parts.reset, parts.layers = reset, layers
        if cfg.quant.mode != "none" and "class" in parts.meta["model"]:  # a network of one's own
            with torch.random.fork_rng():  # the random state training starts from stays
                parts.example = _first_batch(parts.train)
        t = build_trainer(cfg, parts, run, world, progress and world.writer)
        cohort = t.cohort
        if "class" in parts.meta["model"]:  # a network of the user's own
            kind = type(cohort.members[0])
            parts.meta["model"]["class"] = f"{kind.__module__}.{kind.__qualname__}"
        else:  # a built-in one describes itself to the files it is written to
            for member in cohort.members:
                member.meta = parts.meta
        notes = {"strategy": _described(strategy)}
        if cfg.quant.mode != "none":
            notes["compression"] = {n: {"normalized": normed, "scale": cohort.scales[n]}
                                    for n, normed in cohort.normalized.items()}
            line = chosen_scales_line(cohort.scales, cohort.normalized)
            if line and world.writer:
                print(line)
            on_epoch_end = _watch_switch(cfg, run, cohort, on_epoch_end)
        # the handler is in place before run.json exists: a run that shows up can be stopped
        # cleanly at any moment
        with t.stop:
            state = run.resume(cohort) if resume else None
            first = state["epoch"] if resume else run.start(
                cohort, split, deterministic, source, world.size, notes)
            if world.active and cfg.train.sync_batchnorm:
                synchronize_batchnorm(cohort.members, device)
            record, complete = train(t, first, state, on_epoch_end)
        if complete:
            run.finish(cohort.members[0], cohort.meta)
        for member in cohort.members:  # as the user's own would be (channels-last trains faster)
            member.to(memory_format=torch.contiguous_format)
        return Run(run.dir, cfg, cohort.members, record, complete)
    finally:
        run.release()
        leave(world, cohort)


def datasets(name: str = "fashion-mnist", **settings) -> tuple:
    """The train, validation and test splits of a built-in data set (``data.*`` settings by
    bare name: ``train_size``, ``val_size``, ``dir`` ...) as torch ``TensorDataset``s of model
    input: normalized float images and int64 labels (``data.tensor_datasets``)."""
    cfg = make_config(None, **{"data.name": name, **settings})
    return tensor_datasets(build_data(cfg.data, cfg.model.timesteps))


def export(model: nn.Module, path, format: str | None = None, meta: dict | None = None,
           **options) -> Path:
    """Write ``model`` to ``path`` as ``format`` (``formats.FORMATS``: ``packed``,
    ``safetensors``, ``checkpoint``, ``nir``; default: the one the suffix names, ``.tnn``,
    ``.safetensors``, ``.pt`` or ``.nir``, else packed). ``meta`` (JSON) goes in the file, by
    default the network's own description: for a built-in network how to rebuild it and the
    data and config it was trained with, so that ``load`` and ``twinsnn eval`` need no
    model; for a network of your own its class. ``options``: the NIR graph's ``fold``.
    Returns the path."""
    return formats.write(model, path, format, meta, **options)


def load(path, model: nn.Module | None = None, *, member: int = 0,
         integer: bool = False) -> nn.Module:
    """The network in a file any format of ``formats.FORMATS`` wrote, in eval mode: its
    weights loaded into ``model``, a fresh network of your own class, or into the built-in
    network the file describes (which then carries the file's description, ``meta``).
    Compressed weights come back as the exact ``codes * scale`` floats. ``member``: which
    member of a checkpoint's cohort (0, the base); ``integer``: its integer inference
    (``integer.integer_model``)."""
    return inference.load(path, member, integer, model)[0]


def pretrained_path(name: str) -> Path:
    """The file of the network ``name`` that ships with twinsnn (``twinsnn predict --help``
    lists them)."""
    return images.pretrained(name)


def classify_images(model: nn.Module, paths) -> list[dict]:
    """Class, class name and probability of each image file in ``paths`` under ``model`` (a
    network ``load`` read, which carries its description), each converted as that says
    (``classify.classify``)."""
    return images.classify(model, getattr(model, "meta", {}), [Path(p) for p in paths])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor,
            reset: Callable[[nn.Module], None] = reset_states) -> torch.Tensor:
    """Logits ``[B, K]`` of ``model`` on the batch ``x`` (as the model takes it), in eval
    mode, its neurons' state cleared first."""
    model.eval()
    reset(model)
    return logits_of(model(x))


def evaluate(model: nn.Module, data=None, batch_size: int = 1000, device: str | None = None,
             reset: Callable[[nn.Module], None] = reset_states, *, split: str = "test",
             data_dir: str | None = None) -> dict:
    """Accuracy, mean cross-entropy, confusion matrix and firing rates of ``model`` on a
    ``Dataset`` or ``DataLoader`` of ``(x, y)`` (``evaluation.evaluate``: ``accuracy``,
    ``loss``, ``confusion``, ``firing_rates``), on ``device`` (default: where the model is).

    ``data=None``: on the ``split`` (``test`` or ``val``) of the built-in data set the network
    was trained on, as its description says (a network ``load`` read, or ``fit`` trained), fed
    as in training (``data_dir``: where that data set is), with its operations and energy;
    returns what ``twinsnn eval --json`` prints (``inference.report``). ``model`` itself is
    left as it is (a copy is placed as in training: memory format, LIF kernel)."""
    if data is None:
        return inference.report(copy.deepcopy(model), getattr(model, "meta", {}), split,
                                data_dir, device or "auto")
    place = torch.device(device) if device else next(model.parameters()).device
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size)
    return Results(evaluation.evaluate(model.to(place), LoaderFeed(loader, place), batch_size,
                                       reset))


__all__ = ["Run", "classify_images", "datasets", "evaluate", "export", "fit", "load",
           "make_config", "predict", "pretrained_path"]
