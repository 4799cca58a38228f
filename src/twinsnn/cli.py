"""The ``twinsnn`` command line. Every user error ends in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .version import __version__
from .errors import Interrupted, TwinsnnError

DESCRIPTION = """\
Train spiking neural networks with twin network augmentation (TNA) and compress them
to ternary weights.

typical use:
  twinsnn train --config fmnist-cpu            train a spiking CIFARNet on Fashion-MNIST
  twinsnn eval runs/fmnist-cpu/model.safetensors   test accuracy, confusion, firing rates
  twinsnn export runs/fmnist-cpu/checkpoint.pt -o model.tnn   the deployable 2-bit model
  twinsnn data check fashion-mnist              where the data is and whether it is intact
  twinsnn presets                               list the built-in configs
  twinsnn config show --config fmnist-cpu-tna   every config key with its resolved value
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="fmnist-cpu",
                   help="preset name (see `twinsnn presets`) or a YAML file (default: fmnist-cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.001 or --set alpha=1e-4")
    p.add_argument("--name", help="run folder name under --out-dir (default: the preset's)")
    p.add_argument("--out-dir", help="where run folders go (default: runs)")
    p.add_argument("--data-dir", help="folder holding the data set (default: $TWINSNN_DATA, "
                                      "then system locations)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto")
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
    from .distributed import writer_process
    from .runtime import retain_freed_memory
    from .api import fit
    cfg = _config_from_args(args)
    retain_freed_memory()
    record = fit(config=cfg, resume=args.resume, progress=not args.quiet,
                 branch_from=args.branch_from).record
    if not writer_process():  # under torchrun rank 0 speaks for the run
        return 0
    run_dir = Path(cfg.out_dir) / cfg.name
    print(f"finished {cfg.name}: val acc {record.get('val_acc/0', float('nan')):.4f}; "
          f"model saved to {run_dir / 'model.safetensors'}")
    return 0


def cmd_eval(args) -> int:
    from .inference import evaluate_file
    report = evaluate_file(Path(args.model), member=args.member, data_dir=args.data_dir,
                           device=args.device or "auto", split=args.split, integer=args.integer)
    if args.plot:
        from .analysis import plot_operations
        plot_operations(report["operations"], Path(args.plot))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from .inference import format_report
        print(format_report(report))
    return 0


def cmd_data_check(args) -> int:
    from .config import DataConfig
    from .data import dataset_module
    ok, report = dataset_module(args.dataset).check(DataConfig(name=args.dataset,
                                                               dir=args.data_dir))
    print(report)
    return 0 if ok else 2


def cmd_export(args) -> int:
    from .checkpoint import load_checkpoint, member_from_checkpoint
    from .export import export_packed, format_size_report, size_report
    from .quant import weight_sparsity
    if args.format == "nir":
        return _export_nir(args)
    state = load_checkpoint(Path(args.checkpoint))
    model = member_from_checkpoint(state, 0, args.checkpoint)
    out = export_packed(model, Path(args.output), state["meta"])
    print(f"wrote {out}")
    print(format_size_report(size_report(out)))
    sparsity = weight_sparsity(model)
    if sparsity:
        print("zero weights per compressed layer: " +
              ", ".join(f"{k} {100 * v:.1f}%" for k, v in sparsity.items()))
    return 0


def _export_nir(args) -> int:
    from .errors import CheckpointError
    from .inference import load_network
    from .nir import write_graph
    if Path(args.checkpoint).suffix == ".nir":
        raise CheckpointError(f"{args.checkpoint} is a NIR graph already; export a "
                              "checkpoint.pt, model.safetensors or .tnn")
    model, meta = load_network(Path(args.checkpoint))
    out = write_graph(model, meta, Path(args.output), args.fold)
    print(f"wrote {out} (NIR graph, BatchNorm folded into the {args.fold})")
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
    from .report import format_summary, load_run, paired_rows, summarize
    rows = summarize([load_run(Path(r)) for r in args.runs])
    paired = paired_rows(rows, args.baseline)
    if args.json:
        print(json.dumps({"configs": rows, "paired": paired}, indent=2))
    else:
        print(format_summary(rows, paired))
    return 0


def cmd_config_show(args) -> int:
    from .config import dump_yaml
    print(dump_yaml(_config_from_args(args)), end="")
    return 0


def cmd_presets(_args) -> int:
    from .config import preset_names
    print("\n".join(preset_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinsnn", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"twinsnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a network (or a TNA cohort) from a config")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in its folder")
    p.add_argument("--branch-from", metavar="CHECKPOINT",
                   help="start from another run's checkpoint.pt (same config but for quant.*, "
                        "train.epochs and names), e.g. compress a full-precision run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy, confusion matrix and firing rates of a model")
    p.add_argument("model", help="model.safetensors, checkpoint.pt, an exported .tnn or .nir file")
    p.add_argument("--member", type=int, default=0, help="cohort member of a checkpoint (0 = base)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--data-dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--integer", action="store_true",
                   help="a ternary/binary model's hidden layers on integers only (docs/deploy.md)")
    p.add_argument("--plot", metavar="FILE", help="also write a bar chart of each layer's "
                                                  "synaptic operations (.png, .pdf)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="data set utilities")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    c = dsub.add_parser("check", help="where the data set was looked for, found and verified")
    c.add_argument("dataset")
    c.add_argument("--data-dir")
    c.set_defaults(func=cmd_data_check)

    p = sub.add_parser("export", help="write the base network for deployment (2-bit packed "
                                      "or a NIR graph)")
    p.add_argument("checkpoint", help="a run's checkpoint.pt (nir: also model.safetensors, .tnn)")
    p.add_argument("--format", choices=["packed", "nir"], default="packed",
                   help="packed: ternary/binary layers at 2/1 bits per weight, the rest float32; "
                        "nir: a NIR graph with BatchNorm folded (docs/deploy.md)")
    p.add_argument("--fold", choices=["neurons", "weights"], default="neurons",
                   help="nir: fold BatchNorm into each neuron's input scale and leak (the "
                        "default; the graph reproduces the model bitwise) or into the "
                        "full-precision weights and biases")
    p.add_argument("-o", "--output", required=True, help="file to write, e.g. model.tnn")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="train every combination of swept values and seeds")
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
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="training curves of runs, overlaid, labelled by what "
                                    "differs; or (--accuracy) final accuracy per config")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("-o", "--output", required=True, help="image file to write (.png, .pdf)")
    p.add_argument("--accuracy", action="store_true",
                   help="bars of each config's final accuracy with its 95%% CI and seeds")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="with --accuracy: which accuracy (default: test)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="final accuracy of runs, seeds pooled (mean, std, 95%% "
                                      "CI), and each config against a baseline paired by seed")
    p.add_argument("runs", nargs="+", help="run folders (each config's seeds pooled)")
    p.add_argument("--baseline", metavar="CONFIG",
                   help="the config the others are compared with, paired by seed, as the "
                        "table labels it (default: the config of the first run folder)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("config", help="config utilities")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = csub.add_parser("show", help="the resolved config as YAML: every key, preset and "
                                     "--set values applied")
    _add_config_args(c)
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser("presets", help="list the built-in configs")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
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
    except Interrupted:
        print("twinsnn: interrupted; a checkpoint was written, continue with --resume",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("twinsnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
