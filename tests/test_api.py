"""The Python API on networks and data of one's own: every strategy and compression on a plain
``nn.Sequential`` and on SpikingJelly and snnTorch networks, Dataset and DataLoader feeds
against the in-memory path, bitwise resume after SIGKILL, the packed round trip, bad input."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import twinsnn
from twinsnn.cohort import derive_seed
from twinsnn.errors import TwinsnnError

SETTINGS = dict(epochs=2, batch_size=16, lr=1e-3, compile=False, progress=False)
TERNARY = dict(mode="ternary", start_epoch=1, delta_rule="mean_abs", delta=0.5)


def toy_data(n: int = 96, seed: int = 0) -> TensorDataset:
    """Images ``[n, 1, 8, 8]`` of 3 classes that a small net separates: a class-dependent
    bright row plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, 2 * y + 1] += 2.0
    return TensorDataset(x, y)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 3))


def weights(run: twinsnn.Run) -> dict:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


@pytest.mark.parametrize("strategy,extra", [("single", {}), ("tna", {"members": 3}),
                                            ("kd", {}), ("kd+ce", {})])
def test_every_strategy_and_compression_on_a_plain_sequential(tmp_path, strategy, extra):
    teacher = None
    if strategy.startswith("kd"):
        teacher = twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), name="teacher",
                              **SETTINGS).model
    run = twinsnn.fit(mlp, toy_data(), val=toy_data(48, 1), out_dir=str(tmp_path),
                      name=strategy, strategy=strategy, alpha=1e-3, teacher=teacher,
                      **TERNARY, **SETTINGS, **extra)
    accuracy = [r["train_accuracy/0"] for r in run.metrics]  # (kd's loss is the matching term)
    assert len(accuracy) == 2 and accuracy[1] > accuracy[0]
    assert [r["compressed"] for r in run.metrics] == [False, True]
    assert twinsnn.compressed_layers(run.model) == ["3"]  # the middle one: ends stay fp32
    assert len(run.members) == (3 if strategy == "tna" else 1)
    assert {"val_accuracy/0", "val_loss/0"} <= set(run.record)
    assert (run.dir / "model.safetensors").exists()


def test_layers_are_chosen_by_name_type_or_predicate(tmp_path):
    common = dict(out_dir=str(tmp_path), epochs=1, start_epoch=0, mode="ternary",
                  compile=False, progress=False)
    for name, layers, want in (("names", "1,3", ["1", "3"]), ("type", nn.Linear, ["3"]),
                               ("predicate", lambda n, m: m.out_features == 32, ["3"])):
        run = twinsnn.fit(mlp, toy_data(), name=name, layers=layers,
                          full_precision_ends=name != "names", **common)
        assert twinsnn.compressed_layers(run.model) == want


def test_packed_round_trip_into_the_users_class(tmp_path):
    run = twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), name="rt", **TERNARY, **SETTINGS)
    path = twinsnn.export(run.model, tmp_path / "mlp.tnn")
    loaded = twinsnn.load(path, model=mlp())
    x = toy_data(64, 7).tensors[0]
    assert torch.equal(twinsnn.predict(loaded, x), twinsnn.predict(run.model, x))
    # no normalization follows layer 3: codes times one scale (quant.scale=auto)
    codes = loaded[3].weight / loaded[3].weight.abs().max()
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with pytest.raises(TwinsnnError, match="network of your own"):
        twinsnn.load(path)
    same = twinsnn.load(run.dir / "model.safetensors", model=mlp())
    assert torch.equal(twinsnn.predict(same, x), twinsnn.predict(run.model, x))


@pytest.mark.slow
def test_dataset_and_dataloader_feeds_equal_the_in_memory_path(tiny_fmnist, tmp_path):
    """The same samples in the same order, preprocessed alike: the built-in path (uint8 in
    memory, normalized per batch), a Dataset of the normalized images (twinsnn's order) and
    a DataLoader yielding that order train to the same weights bit for bit."""
    common = dict(config="fmnist-cpu", dir=str(tiny_fmnist), verify=False, val_size=40,
                  width=0.0625, timesteps=2, epochs=1, batch_size=32, augment=False,
                  out_dir=str(tmp_path), compile=False, progress=False)
    train, val, _ = twinsnn.datasets("fashion-mnist", dir=str(tiny_fmnist), verify=False,
                                     val_size=40)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(
        derive_seed(0, 0, "order"))).tolist()
    loader = DataLoader(train, batch_size=32, sampler=order,
                        generator=torch.Generator().manual_seed(1))
    runs = [twinsnn.fit("cifarnet", "fashion-mnist", name="memory", **common),
            twinsnn.fit("cifarnet", train, val=val, num_classes=10, name="dataset", **common),
            twinsnn.fit("cifarnet", loader, val=val, num_classes=10, name="loader", **common)]
    first = weights(runs[0])
    for run in runs[1:]:
        assert all(torch.equal(first[k], v) for k, v in weights(run).items())
        assert run.record["val_accuracy/0"] == runs[0].record["val_accuracy/0"]


SCRIPT = """
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
import twinsnn

g = torch.Generator().manual_seed(0)
y = torch.randint(0, 3, (600,), generator=g)
x = torch.randn(600, 1, 8, 8, generator=g)
x[torch.arange(600), 0, 2 * y + 1] += 2.0
make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
twinsnn.fit(make, TensorDataset(x, y), val=TensorDataset(x[:100], y[:100]), epochs=3,
            batch_size=4, strategy="tna", mode="ternary", start_epoch=1, compile=False,
            out_dir=sys.argv[1], name=sys.argv[2], resume=sys.argv[3] == "resume",
            progress=False)
"""


@pytest.mark.slow
def test_an_api_run_killed_at_random_points_resumes_bitwise(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(name, resume=False):
        return subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), name,
                                 "resume" if resume else "new"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert start("straight").wait(timeout=300) == 0
    run, rng = tmp_path / "runs" / "killed", random.Random(0)
    for _ in range(3):
        proc = start("killed", (run / "checkpoint.pt").exists())
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = start("killed", (run / "checkpoint.pt").exists())
    assert last.wait(timeout=300) == 0, last.stderr.read()[-2000:]
    a, b = (twinsnn.load(tmp_path / "runs" / n / "model.safetensors", model=nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 64),
        nn.ReLU(), nn.Linear(64, 3))).state_dict() for n in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


class Bad(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.linear, self.output = nn.Linear(64, 3), output

    def forward(self, x):
        return self.output(self.linear(x.flatten(1)))


@pytest.mark.parametrize("model,data,settings,message", [
    (lambda: Bad(lambda o: o.sum(1)), toy_data(), {}, "returns logits [B, K]"),
    (lambda: Bad(lambda o: o[None, None]), toy_data(), {}, "returns logits [B, K]"),
    (lambda: Bad(lambda o: o[:, :2]), toy_data(), {}, "the model gives 2 classes"),
    (mlp, toy_data(), {"mode": "ternary", "start_epoch": 0, "layers": "conv*"},
     "matches no layer"),
    (mlp, [1, 2, 3], {}, "(x, y) pairs"),
    (mlp, [(torch.zeros(1, 8, 8), 0.5)], {}, "integer labels"),
    (mlp(), toy_data(), {}, "function that builds a fresh network"),
    (lambda: "not a net", toy_data(), {}, "not an nn.Module"),
    (mlp, toy_data(), {"lr": -1}, "train.lr must be positive"),
    (mlp, toy_data(), {"no_such_key": 1}, "unknown config key"),
])
def test_bad_input_raises_one_twinsnn_error_and_writes_no_model(tmp_path, model, data,
                                                                  settings, message):
    with pytest.raises(TwinsnnError, match=re.escape(message)) as err:
        twinsnn.fit(model, data, out_dir=str(tmp_path), name="bad", epochs=1, batch_size=16,
                    compile=False, progress=False, **settings)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_the_same_mistakes_through_the_cli_are_one_line_and_exit_2(tiny_fmnist, tmp_path, capsys):
    from test_cli import TINY, assert_one_line_error, cli
    for name, sets, fragment in (
            ("layers", ["quant.layers=nomatch*", "mode=ternary", "start_epoch=0"],
             "matches no layer"),
            ("teacher", ["strategy=kd"], "needs a teacher")):
        proc = cli(capsys, "train", "--data-dir", tiny_fmnist, *TINY, "--set", "epochs=1",
                   *[a for s in sets for a in ("--set", s)], "--out-dir", tmp_path,
                   "--name", name, "--quiet")
        assert_one_line_error(proc, fragment)
        assert not (tmp_path / name / "model.safetensors").exists()


def test_resetting_one_network_leaves_another_untouched():
    """snnTorch keeps a list of every Leaky instance in its class (and snntorch.utils.reset
    clears them all); twinsnn resets a network's own neurons only, so a base and its twin
    never share or clear each other's state. SpikingJelly's memory modules alike."""
    snn = pytest.importorskip("snntorch")
    a, b = (nn.Sequential(nn.Linear(4, 4), snn.Leaky(beta=0.5, init_hidden=True))
            for _ in range(2))
    x = torch.ones(2, 4) * 3
    a(x), b(x)
    before = b[1].mem.clone()
    assert before.abs().sum() > 0
    twinsnn.reset_states(a)
    assert torch.equal(a[1].mem, torch.zeros_like(before)) and torch.equal(b[1].mem, before)
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")
    c, d = sj.LIFNode(), sj.LIFNode()
    c(torch.ones(3) * 0.7), d(torch.ones(3) * 0.7)
    twinsnn.reset_states(c)
    assert c.v == 0.0 and torch.equal(d.v, torch.full((3,), 0.35))
