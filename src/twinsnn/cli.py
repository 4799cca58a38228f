"""The ``twinsnn`` command line, a client of the Python API. Every user error ends in one
line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path

from .errors import Interrupted, TwinsnnError
from .version import __version__

DESCRIPTION = """\
Train spiking neural networks with twin network augmentation (TNA) and compress them
to ternary weights.

typical use:
  twinsnn train --config fmnist-cpu-fast-tna-tsnn     TNA T-SNN on Fashion-MNIST (CPU scale)
  twinsnn export runs/fmnist-cpu-fast-tna-tsnn/checkpoint.pt -o model.tnn   2-bit packed
  twinsnn eval model.tnn                              test accuracy, operations, energy
  twinsnn predict --pretrained fmnist-tna-tsnn shoe.png   classify images (a shipped net)
  twinsnn presets                                     the built-in configs, described
  twinsnn config show --config fmnist-cpu-tna --explain   every key, its value and meaning

`twinsnn COMMAND --help` describes each command, with examples.
"""
DEVICES = ["auto", "cpu", "cuda"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and "did you mean" for a mistyped choice."""

    def error(self, message: str):
        if "invalid choice" in message:
            wrong = message.split("invalid choice: ")[1].split("'")[1]
            choices = [c for c in message.split("choose from ")[-1].replace("'", "")
                       .rstrip(")").split(", ")]
            near = difflib.get_close_matches(wrong, choices, 1)
            message = message.split(" (choose")[0] + (f"; did you mean {near[0]}?" if near
                                                     else f"; choose from {', '.join(choices)}")
        self.exit(2, f"{self.prog}: error: {message}\n")


def _command(sub, name: str, summary: str, description: str, examples: str, func):
    p = sub.add_parser(name, help=summary, description=description,
                       epilog="examples:\n" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="fmnist-cpu",
                   help="preset name (see `twinsnn presets`) or a YAML file (default: fmnist-cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.001 or --set alpha=1e-4 "
                        "(keys: `twinsnn config show --explain`); repeatable")
    p.add_argument("--name", help="run folder name under --out-dir (default: the preset's)")
    p.add_argument("--out-dir", help="where run folders go (default: runs)")
    p.add_argument("--data-dir", help="folder holding the data set (default: $TWINSNN_DATA, "
                                      "then system locations)")
    p.add_argument("--device", choices=DEVICES, help="default: auto (CUDA when present)")
    p.add_argument("--seed", type=int, help="random seed of the run")
    p.add_argument("--teacher", help="kd / kd+ce: the frozen teacher's model.safetensors")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="bitwise-reproducible kernels (default: on for CPU, off for CUDA)")


def _config_from_args(args):
    from .config import load_config
    overrides = list(args.overrides)
    for key, value in (("name", args.name), ("out_dir", args.out_dir), ("data.dir", args.data_dir),
                       ("train.device", args.device), ("train.seed", args.seed),
                       ("loss.teacher", args.teacher), ("train.deterministic", args.deterministic)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)


def cmd_train(args) -> int:
    from .api import fit
    from .distributed import writer_process
    from .metrics import ACCURACY, member_key
    from .runtime import retain_freed_memory
    cfg = _config_from_args(args)
    retain_freed_memory()
    run = fit(config=cfg, resume=args.resume, progress=not args.quiet,
              branch_from=args.branch_from)
    if not writer_process():  # under torchrun rank 0 speaks for the run
        return 0
    accuracy = run.record.get(member_key("val", ACCURACY), float("nan"))
    print(f"finished {cfg.name}: val accuracy {accuracy:.4f}; "
          f"model saved to {run.dir / 'model.safetensors'}")
    print(f"next: twinsnn eval {run.dir / 'model.safetensors'}   |   twinsnn export "
          f"{run.dir / 'checkpoint.pt'} -o {run.dir / 'model.tnn'}")
    return 0


def _model_path(args) -> Path:
    """The model a command reads: ``--pretrained NAME`` or its path argument (not both)."""
    from .api import pretrained_path
    from .errors import ConfigError
    if (args.pretrained is None) == (args.model is None):
        raise ConfigError("name a model file or --pretrained NAME (one of the two)")
    return pretrained_path(args.pretrained) if args.pretrained else Path(args.model)


def cmd_eval(args) -> int:
    from .api import evaluate, load
    from .inference import format_report
    path = _model_path(args)
    model = load(path, member=args.member, integer=args.integer)
    report = {"model": str(path), "member": args.member, "integer": args.integer,
              **evaluate(model, split=args.split, data_dir=args.data_dir,
                         device=args.device or "auto")}
    if args.plot:
        from .analysis import plot_operations
        plot_operations(report["operations"], Path(args.plot))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_predict(args) -> int:
    from .api import classify_images, load, pretrained_path
    paths = list(args.paths)
    model_path = pretrained_path(args.pretrained) if args.pretrained else Path(paths.pop(0))
    if not paths:
        from .errors import ConfigError
        raise ConfigError("name one or more image files after the model")
    rows = classify_images(load(model_path), paths)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['image']}: {row['name']} (class {row['class']}, "
                  f"p = {row['probability']:.3f})")
    return 0


def cmd_data_check(args) -> int:
    from .config import DataConfig
    from .data import dataset_module
    ok, report = dataset_module(args.dataset).check(DataConfig(name=args.dataset,
                                                               dir=args.data_dir))
    print(report)
    return 0 if ok else 2


def cmd_export(args) -> int:
    from .api import export, load
    from .errors import CheckpointError
    from .formats import FORMATS, format_of
    source, output = Path(args.checkpoint), Path(args.output)
    if source.suffix == ".nir":
        raise CheckpointError(f"{source} is a NIR graph already; export the checkpoint.pt, "
                              "model.safetensors or .tnn it came from")
    fmt = FORMATS[args.format] if args.format else format_of(output, existing=False)
    model = load(source)
    out = export(model, output, fmt.name, **({} if args.fold is None else {"fold": args.fold}))
    print(f"wrote {out} ({fmt.name}: {fmt.summary})")
    if fmt.name == "packed":
        from .packed import format_size_report, size_report
        from .quant import weight_sparsity
        print(format_size_report(size_report(out)))
        sparsity = weight_sparsity(model)
        if sparsity:
            print("zero weights per compressed layer: " +
                  ", ".join(f"{k} {100 * v:.1f}%" for k, v in sparsity.items()))
    return 0


def cmd_sweep(args) -> int:
    from .runtime import retain_freed_memory
    from .sweep import sweep
    seeds = [int(s) for s in args.seeds.split(",")]
    retain_freed_memory()
    sweep(args.config, args.overrides, seeds, args.out_dir, progress=not args.quiet,
          test=args.test, executor=args.executor, address=args.address)
    return 0


def cmd_plot(args) -> int:
    from .report import plot_accuracy, plot_runs
    runs = [Path(r) for r in args.runs]
    if args.accuracy:
        print(f"wrote {plot_accuracy(runs, Path(args.output), args.split)}")
    else:
        print(f"wrote {plot_runs(runs, Path(args.output))}")
    return 0


def cmd_report(args) -> int:
    from .report import (family_report, family_sizes, format_family, format_summary,
                         load_run, paired_rows, summarize)
    if bool(args.runs) == bool(args.family):
        raise TwinsnnError("give run folders or --family FILE (one of the two)")
    if args.family:
        report = family_report(Path(args.family))
        print(json.dumps(report, indent=2) if args.json else format_family(report))
        return 0
    rows = summarize([load_run(Path(r)) for r in args.runs])
    paired = paired_rows(rows, args.baseline)
    if args.json:
        print(json.dumps({"configs": rows, "paired": paired, "family": {
            "correction": "holm", **family_sizes(paired)}}, indent=2))
    else:
        print(format_summary(rows, paired))
    return 0


def cmd_config_show(args) -> int:
    from .choices import check_choices
    from .config import dump_yaml, explain
    cfg = check_choices(_config_from_args(args))
    print(explain(cfg) if args.explain else dump_yaml(cfg), end="")
    return 0


def cmd_presets(_args) -> int:
    from .config import preset_description, preset_names
    names = preset_names()
    width = max(map(len, names))
    print("\n".join(f"{n:<{width}}  {preset_description(n)}" for n in names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="twinsnn", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"twinsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser,
                                help="one of these; `twinsnn COMMAND --help` for its own")

    p = _command(sub, "train", "train a network (or a TNA cohort) from a config",
                 "Train a built-in network on a built-in data set as a config (a preset or a "
                 "YAML file, then --set values) says. The run folder <out-dir>/<name>/ gets "
                 "run.json, metrics.jsonl, checkpoint.pt after every epoch and "
                 "model.safetensors at the end. Ctrl-C writes a checkpoint; --resume goes on "
                 "from it, bit for bit. Under torchrun it trains data-parallel.",
                 "  twinsnn train --config fmnist-cpu-fast-tna-tsnn\n"
                 "  twinsnn train --config fmnist-cpu-tna --set alpha=1e-5 --seed 1 --name s1\n"
                 "  twinsnn train --config fmnist-cpu-tsnn --branch-from runs/fp/checkpoint.pt\n"
                 "  torchrun --nproc_per_node 2 -m twinsnn train --config cifar10-paper-tna",
                 cmd_train)
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in its folder")
    p.add_argument("--branch-from", metavar="CHECKPOINT",
                   help="start from another run's checkpoint.pt (same config but for quant.*, "
                        "loss.alpha_compressed, train.epochs and names), e.g. compress a "
                        "full-precision run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(sub, "eval", "test accuracy, confusion matrix, firing rates and operations",
                 "Evaluate a saved network on the test (or validation) split of the data set "
                 "it was trained on: accuracy, mean cross-entropy, confusion matrix, firing "
                 "rates, synaptic operations and an energy estimate.",
                 "  twinsnn eval runs/fmnist-cpu/model.safetensors\n"
                 "  twinsnn eval model.tnn --integer        # hidden layers on integers only\n"
                 "  twinsnn eval --pretrained fmnist-tna-tsnn\n"
                 "  twinsnn eval runs/fmnist-cpu-tna/checkpoint.pt --member 1 --split val",
                 cmd_eval)
    p.add_argument("model", nargs="?",
                   help="model.safetensors, checkpoint.pt, an exported .tnn or a .nir graph")
    p.add_argument("--pretrained", metavar="NAME",
                   help="a network that ships with twinsnn instead of a file "
                        "(`twinsnn predict --help` lists them)")
    p.add_argument("--member", type=int, default=0,
                   help="cohort member of a checkpoint.pt (0 = base, 1 = the twin)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="the test split (default) or the validation split carved from training")
    p.add_argument("--data-dir", help="folder holding the data set (default: as in training, "
                                      "$TWINSNN_DATA, then system locations)")
    p.add_argument("--device", choices=DEVICES, help="default: auto (CUDA when present)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--integer", action="store_true",
                   help="a ternary/binary model's hidden layers on integers only (docs/deploy.md)")
    p.add_argument("--plot", metavar="FILE", help="also write a bar chart of each layer's "
                                                  "synaptic operations (.png, .pdf)")

    from .classify import pretrained_names
    p = _command(sub, "predict", "classify image files with a saved or shipped network",
                 "Classify image files (PNG, JPEG, any size), each converted as the network's "
                 "metadata says: grayscale or RGB, resized to its input, normalized with its "
                 "data set's statistics. Prints each file's class, its name and probability. "
                 f"Shipped networks (--pretrained): {', '.join(pretrained_names()) or 'none'}.",
                 "  twinsnn predict --pretrained fmnist-tna-tsnn boot.png shirt.jpg\n"
                 "  twinsnn predict runs/fmnist-cpu/model.tnn image.png --json", cmd_predict)
    p.add_argument("paths", nargs="+", metavar="FILE",
                   help="the model file (unless --pretrained) and then the images")
    p.add_argument("--pretrained", metavar="NAME", help="a network that ships with twinsnn")
    p.add_argument("--json", action="store_true", help="print the classes as JSON")

    p = _command(sub, "data", "data set utilities (check)",
                 "Data set utilities. `twinsnn data check NAME` says where the data set was "
                 "looked for, what was found and whether its checksums match.",
                 "  twinsnn data check fashion-mnist\n"
                 "  twinsnn data check cifar10 --data-dir ~/data", None)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser,
                            help="what to do with the data")
    c = _command(dsub, "check", "where the data set was looked for, found and verified",
                 "Where a data set was looked for, which files were found and whether their "
                 "official checksums match; exit 2 when it is not usable.",
                 "  twinsnn data check fashion-mnist", cmd_data_check)
    c.add_argument("dataset", help="fashion-mnist, cifar10, cifar100 or cifar10-dvs")
    c.add_argument("--data-dir", help="look only here (default: $TWINSNN_DATA, then system "
                                      "locations)")

    from .formats import FORMATS
    p = _command(sub, "export", "write the base network for deployment (packed, NIR, ...)",
                 "Write a run's base network (or any network file's) in a format of its own: "
                 "packed (ternary weights at 2 bits, binary at 1, the rest float32; prints the "
                 "size per layer), a NIR graph with BatchNorm folded, model.safetensors or a "
                 "checkpoint. The format is the one the output's suffix names (.tnn, .nir, "
                 ".safetensors, .pt; packed for any other) unless --format says.\n\nformats:\n"
                 + "\n".join(f"  {f.name:<12} {f.suffix:<13} {f.summary}"
                             for f in FORMATS.values()),
                 "  twinsnn export runs/fmnist-cpu-tsnn/checkpoint.pt -o model.tnn\n"
                 "  twinsnn export model.tnn -o model.nir", cmd_export)
    p.add_argument("checkpoint", help="a run's checkpoint.pt, a model.safetensors or a .tnn")
    p.add_argument("--format", choices=list(FORMATS),
                   help="the format to write (default: the one the output's suffix names)")
    p.add_argument("--fold", choices=["neurons", "weights"],
                   help="nir: fold BatchNorm into each neuron's input scale and leak (the "
                        "default; the graph reproduces the model bitwise) or into the "
                        "full-precision weights and biases")
    p.add_argument("-o", "--output", required=True, help="file to write, e.g. model.tnn")

    p = _command(sub, "sweep", "train every combination of swept values and seeds",
                 "Train every combination of the swept values and seeds, one run folder each "
                 "(finished runs are skipped, interrupted ones resumed), then summarize them, "
                 "best on validation first.",
                 "  twinsnn sweep --config fmnist-cpu-tna --set alpha=1e-3,1e-4,1e-5\n"
                 "  twinsnn sweep --config fmnist-cpu --seeds 0,1,2 --test --executor ray",
                 cmd_sweep)
    p.add_argument("--config", "-c", required=True, help="preset name or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=V1,V2,...", help="a key and the values to sweep (repeatable)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out-dir", help="where run folders go (default: the preset's)")
    p.add_argument("--test", action="store_true",
                   help="evaluate each finished model once on the test split for the summary "
                        "(test.json); the best config is still chosen on validation")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one run after another in this process; ray: every run a Ray "
                        "task (one GPU each where the cluster has GPUs; pip install "
                        "'twinsnn[ray]')")
    p.add_argument("--address", help="with --executor ray: the Ray cluster to join, e.g. "
                                     "ray://head:10001 (default: start a local one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(sub, "plot", "training curves of runs, or their final accuracy",
                 "Training curves of runs, overlaid and labelled by what differs between "
                 "their configs; or (--accuracy) each config's final accuracy with its 95% "
                 "confidence interval over seeds.",
                 "  twinsnn plot runs/a runs/b -o curves.png\n"
                 "  twinsnn plot runs/*-seed* --accuracy --split val -o acc.png", cmd_plot)
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("-o", "--output", required=True, help="image file to write (.png, .pdf)")
    p.add_argument("--accuracy", action="store_true",
                   help="bars of each config's final accuracy with its 95%% CI and seeds")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="with --accuracy: which accuracy (default: test)")

    p = _command(sub, "report", "final accuracy of runs over seeds, and paired differences",
                 "Final accuracy of runs, seeds pooled per config (mean, std, 95% CI), and "
                 "every config against a baseline paired by seed (mean difference, 95% CI, "
                 "paired t-test, and its p-value adjusted by Holm's method over the "
                 "comparisons printed). With --family, the comparisons a file lists instead, "
                 "Holm-adjusted over all of them.",
                 "  twinsnn report runs/single-seed* runs/tna-seed*\n"
                 "  twinsnn report runs/* --baseline 'strategy=single' --json\n"
                 "  twinsnn report --family docs/runs/claims/family.json", cmd_report)
    p.add_argument("runs", nargs="*", help="run folders (each config's seeds pooled)")
    p.add_argument("--baseline", metavar="CONFIG",
                   help="the config the others are compared with, paired by seed, as the "
                        "table labels it (default: the config of the first run folder)")
    p.add_argument("--json", action="store_true",
                   help="print the per-config rows and the paired rows as JSON")
    p.add_argument("--family", metavar="FILE",
                   help="a JSON file of comparisons (run folders of a baseline and of another "
                        "arm, a metric: val_accuracy, test_accuracy or test_loss), reported "
                        "paired by seed with Holm's correction over the file's comparisons")

    p = _command(sub, "config", "config utilities (show)",
                 "Config utilities. `twinsnn config show` prints the resolved config (a "
                 "preset or YAML file, then --set values); --explain adds each key's meaning.",
                 "  twinsnn config show --config fmnist-cpu-tna --explain", None)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=Parser,
                            help="what to do with the config")
    c = _command(csub, "show", "the resolved config: every key, preset and --set applied",
                 "The resolved config as YAML (a file `twinsnn train --config` reads back), or "
                 "with --explain every key, its value and what it means.",
                 "  twinsnn config show --config fmnist-cpu-tsnn > mine.yaml\n"
                 "  twinsnn config show --set alpha=1e-5 --explain", cmd_config_show)
    _add_config_args(c)
    c.add_argument("--explain", action="store_true",
                   help="each key with its value and meaning instead of YAML")

    _command(sub, "presets", "list the built-in configs with their descriptions",
             "The built-in configs (presets), each with the first line of its description; "
             "`twinsnn config show --config NAME` prints one in full.",
             "  twinsnn presets", cmd_presets)
    parser.groups = {"data": sub.choices["data"], "config": sub.choices["config"]}
    return parser


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (torch raises it as a RuntimeError
    subclass, or with the allocator's message)."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(error))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return done.code
    if getattr(args, "func", None) is None:  # no command, or `data` / `config` alone
        parser.groups.get(args.command, parser).print_help()
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here
        return code
    except BrokenPipeError:  # `twinsnn report ... | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 1
    except TwinsnnError as e:
        print(f"twinsnn: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print("twinsnn: error: out of memory (a network, batch or data set larger than this "
              "machine holds): lower model.width, model.timesteps or train.batch_size",
              file=sys.stderr)
        return 2
    except Interrupted:
        print("twinsnn: interrupted; a checkpoint was written, continue with --resume",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("twinsnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
