"""Compares two runs' per-epoch metrics (every value but the timings) and test results, exactly.
Usage: python compare_metrics.py RUN_A RUN_B [TEST_A TEST_B]: RUN_* are folders with
metrics.jsonl; TEST_* are JSON files with the test accuracy (test.json or `twinsnn eval --json`)."""
import json
import sys
from pathlib import Path

TIMINGS = ("samples_per_s", "epoch_time_s")


def flat(record, prefix=""):
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif key not in TIMINGS:
            out[prefix + key] = value
    return out


def epochs(run):
    return [flat(json.loads(l)) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]


a, b = epochs(sys.argv[1]), epochs(sys.argv[2])
print(f"{sys.argv[1]}: {len(a)} epochs; {sys.argv[2]}: {len(b)} epochs")
for i, (x, y) in enumerate(zip(a, b)):
    keys = sorted(set(x) | set(y))
    differing = [k for k in keys if x.get(k) != y.get(k)]
    print(f"epoch {i}: {len(keys)} values compared, {len(differing)} differing"
          + (f": {', '.join(differing[:8])}{' ...' if len(differing) > 8 else ''}" if differing else ""))
    for k in ("train_loss", "val_acc/0", "val_acc/1"):
        if k in x or k in y:
            print(f"  {k}: {x.get(k)!r} | {y.get(k)!r}")
if len(sys.argv) == 5:
    ta, tb = (json.loads(Path(p).read_text()) for p in sys.argv[3:5])
    print(f"test accuracy: {ta.get('accuracy')!r} | {tb.get('accuracy')!r}; loss: "
          f"{ta.get('loss')!r} | {tb.get('loss')!r}")
