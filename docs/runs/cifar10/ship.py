"""Ships a packed network with twinsnn: copies PACKED to src/twinsnn/pretrained/NAME.tnn and
writes its record NAME.json (how it was trained: RUN's run.json and COMMAND; what it scored;
on which platforms that score was checked).

    python ship.py NAME RUN PACKED --description TEXT --command TEXT [--data-dir DIR] [--into DIR]

The packed file is evaluated on the test split here, as ``twinsnn eval`` does it, on this
machine's CPU under the ISA limits set (``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``
holds oneDNN and MKL to AVX2); its accuracy must be RUN's ``test.json`` (the run's own model,
scored once by ``final_test``). Run again for the same file under other limits: the platform is
added to ``test_accuracy_checked_on`` when the accuracy is the same, else nothing is written.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from twinsnn.files import atomic_write, write_text
from twinsnn.inference import evaluate_file
from twinsnn.metrics import renamed
from twinsnn.run import cpu_info

SHIPPED = Path(__file__).resolve().parents[3] / "src" / "twinsnn" / "pretrained"


def platform() -> str:
    """The CPU, the level torch dispatches to and the oneDNN/MKL limits (as the tests name a
    platform)."""
    cpu = cpu_info()
    isa = ",".join(cpu["isa_limits"].get(k, "-") for k in ("ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS"))
    return (f"{cpu['cpu']} (family {cpu['family']} model {cpu['model']}) | "
            f"{cpu['torch_capability']} | isa {isa}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("run", type=Path)
    parser.add_argument("packed", type=Path)
    parser.add_argument("--description", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--into", type=Path, default=SHIPPED,
                        help="the folder to ship into (default: the package's)")
    args = parser.parse_args()
    target = args.into / f"{args.name}.tnn"
    record_path = target.with_suffix(".json")
    same_file = target.exists() and target.read_bytes() == args.packed.read_bytes()
    record = json.loads(record_path.read_text()) if same_file and record_path.exists() else None
    report = evaluate_file(args.packed, data_dir=args.data_dir)
    scored = json.loads((args.run / "test.json").read_text())
    want = record["test_accuracy"] if record else scored["accuracy"]
    if report["accuracy"] != want:
        sys.exit(f"{args.packed}: test accuracy {report['accuracy']} here, {want} recorded; "
                 "nothing written")
    if record is None:
        run = json.loads((args.run / "run.json").read_text())
        last = renamed(json.loads((args.run / "metrics.jsonl").read_text().splitlines()[-1]))
        machine = run["machine"]
        record = {"name": args.name, "description": args.description,
                  "command": args.command, "config": run["config"], "run": args.run.name,
                  "seed": run["config"]["train"]["seed"], "code": run["code"],
                  "torch": run["torch_version"],
                  "machine": {k: machine[k] for k in ("cpu", "family", "model",
                                                      "torch_capability", "torch_threads")},
                  "test_accuracy": report["accuracy"], "test_loss": report["loss"],
                  "val_accuracy": last["val_accuracy/0"], "test_accuracy_checked_on": [],
                  "bytes": args.packed.stat().st_size}
        atomic_write(target, lambda tmp: shutil.copyfile(args.packed, tmp))
    record["test_accuracy_checked_on"] = sorted({*record["test_accuracy_checked_on"],
                                                 platform()})
    write_text(record_path, json.dumps(record, indent=2) + "\n")
    print(f"{target}: test accuracy {report['accuracy']:.4f}, checked on "
          f"{'; '.join(record['test_accuracy_checked_on'])}")


if __name__ == "__main__":
    main()
