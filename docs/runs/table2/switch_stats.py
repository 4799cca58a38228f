"""Per compressed layer of full-precision checkpoints (the weights at the switch): the fraction
of zeros that eq. 6 with ``delta`` would give, and the mean and max |w| of the latent weights.

    python docs/runs/table2/switch_stats.py runs/fmnist-cpu-epochs2-seed*/checkpoint.pt
"""
import json
import sys

from twinsnn import quant
from twinsnn.checkpoint import load_checkpoint, member_from_checkpoint

DELTA = 0.1


def layer_stats(path: str) -> dict:
    model = member_from_checkpoint(load_checkpoint(path), 0, path)
    names = quant.compress(model, "ternary", DELTA)
    zeros = quant.weight_sparsity(model)
    modules = dict(model.named_modules())
    rows = {}
    for name in names:
        latent = modules[name].parametrizations.weight.original.abs()
        rows[name] = {f"zeros_at_delta_{DELTA}": round(zeros[name], 4),
                      "mean_abs": round(latent.mean().item(), 4),
                      "max_abs": round(latent.max().item(), 4)}
    return rows


if __name__ == "__main__":
    print(json.dumps({path: layer_stats(path) for path in sys.argv[1:]}, indent=1))
