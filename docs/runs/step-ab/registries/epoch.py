"""One epoch of the main job's network and loss (fmnist-cpu-fast-tna-tsnn with loss.alpha 1e-5
set explicitly, so that the preset's own alpha at either commit does not enter) on the first
2,560 real Fashion-MNIST training images (40 steps of 64) through twinsnn.fit, in a throw-away
folder; prints the epoch's training time and throughput as JSON, labelled with argv[1]."""
import json
import sys
import tempfile

import twinsnn

with tempfile.TemporaryDirectory() as folder:
    run = twinsnn.fit(config="fmnist-cpu-fast-tna-tsnn", out_dir=folder, name="ab", epochs=1,
                      train_limit=2560, val_size=100, alpha=1e-5, alpha_compressed=None,
                      progress=False)
print(json.dumps({"label": sys.argv[1], "epoch_time_s": run.record["epoch_time_s"],
                  "samples_per_s": run.record["samples_per_s"],
                  "alpha": run.config.loss.alpha}))
