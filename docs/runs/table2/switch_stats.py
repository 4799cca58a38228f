"""Fraction of latent weights with |w| <= delta (zeros after eq. 6) and mean |w|, per layer, in the
full-precision checkpoints at the switch (end of epoch 2)."""
import json, sys
from twinsnn.checkpoint import load_checkpoint
out = {}
for path in sys.argv[1:]:
    members = load_checkpoint(path)["members"][0]
    rows = {}
    for k, w in members.items():
        if k.endswith("synapse.weight") and not k.startswith(("convs.0.", "out.")):
            rows[k[:-len(".weight")]] = {"zeros_at_delta_0.1": round((w.abs() <= 0.1).float().mean().item(), 4),
                                         "mean_abs": round(w.abs().mean().item(), 4),
                                         "max_abs": round(w.abs().max().item(), 4)}
    out[path] = rows
print(json.dumps(out, indent=1))
