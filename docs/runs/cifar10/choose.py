"""The plan's choice rule: the setting whose run has the highest validation accuracy of the
base after its last epoch (``val_acc/0`` in metrics.jsonl); a tie goes to the setting listed
first. Writes the chosen setting to OUT and prints every candidate.

    python choose.py OUT SETTING=RUN_FOLDER [SETTING=RUN_FOLDER ...]
"""
import json
import sys
from pathlib import Path

out, candidates = Path(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:]]
scores = []
for setting, run in candidates:
    last = json.loads(Path(run, "metrics.jsonl").read_text().splitlines()[-1])
    scores.append((last.get("val_accuracy/0", last.get("val_acc/0")), setting, run, last["epoch"]))
best = max(scores, key=lambda s: s[0])  # max keeps the first of equal values
for acc, setting, run, epoch in scores:
    print(f"{'*' if (acc, setting) == best[:2] else ' '} {setting}: val acc {acc:.4f} "
          f"after epoch {epoch} ({run})")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(best[1] + "\n")
