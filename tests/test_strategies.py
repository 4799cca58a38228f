"""Every registered strategy, as the registry holds it: its loss at alpha 0 is the members'
cross-entropies, it trains end to end through ``fit``, and ``run.json`` names it; a strategy
of one's own from a script; the names ``fit`` takes."""
import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

import twinsnn
from twinsnn.config import LossConfig
from twinsnn.errors import ConfigError
from twinsnn.strategies import DML, STRATEGIES, TNA, Strategy, from_config

from tests.test_api import mlp, toy_data

SETTINGS = dict(epochs=2, batch_size=16, lr=1e-3, compile=False, progress=False,
                mode="ternary", start_epoch=1, delta_rule="mean_abs", delta=0.5)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_at_alpha_zero_every_strategy_is_its_members_cross_entropies(name):
    """With the matching weight 0, a strategy's loss is the sum of its trained members'
    cross-entropies (a teacher-only student's: nothing), whatever the others output."""
    strategy = from_config(LossConfig(strategy=name, alpha=0.0, members=3))
    g = torch.Generator().manual_seed(1)
    outputs = [torch.randn(2, 5, 4, generator=g) for _ in range(strategy.members +
                                                                  strategy.needs_teacher)]
    y = torch.tensor([0, 3, 1, 1, 2])
    total, parts = strategy.loss(outputs, y)
    trained = outputs[:strategy.members]
    own = [F.cross_entropy(o.sum(0), y) for o in trained]
    if "ce/0" in parts:  # kd's student learns from the teacher alone
        assert total.item() == pytest.approx(sum(own).item(), rel=1e-6)
        assert [parts[f"ce/{i}"].item() for i in range(len(own))] == \
            pytest.approx([c.item() for c in own], rel=1e-6)
    else:
        assert total.item() == 0.0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_trains_through_fit(tmp_path, name):
    strategy = from_config(LossConfig(strategy=name))
    teacher = mlp() if strategy.needs_teacher else None  # frozen; trained or not
    run = twinsnn.fit(mlp, toy_data(), val=toy_data(48, 1), out_dir=str(tmp_path), name=name,
                      strategy=name, alpha=1e-3, teacher=teacher, **SETTINGS)
    assert len(run.members) == strategy.members
    assert [r["compressed"] for r in run.metrics] == [False, True]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in run.metrics)
    assert {"val_accuracy/0", "val_loss/0"} <= set(run.record)
    recorded = json.loads((run.dir / "run.json").read_text())
    assert recorded["config"]["loss"]["strategy"] == name
    assert recorded["strategy"]["class"] == \
        f"{STRATEGIES[name].__module__}.{STRATEGIES[name].__qualname__}"
    want = strategy.settings() | ({"alpha": 1e-3} if "alpha" in strategy.settings() else {})
    assert recorded["strategy"]["settings"] == want


def test_dml_trains_a_cohort_whose_members_come_closer(tmp_path):
    """With a large weight the members' predictions agree more than trained apart."""
    agreement = {}
    for alpha in (0.0, 5.0):
        run = twinsnn.fit(mlp, toy_data(192), out_dir=str(tmp_path), name=f"dml{alpha}",
                          strategy="dml", alpha=alpha, temperature=2.0, members=2,
                          epochs=2, batch_size=16, lr=1e-3, compile=False, progress=False)
        agreement[alpha] = run.metrics[-1]["train_match"]
    assert agreement[5.0] < agreement[0.0] / 2


def test_an_object_of_a_registered_class_is_written_into_the_config(tmp_path):
    run = twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), name="obj",
                      strategy=DML(alpha=0.5, temperature=2.0, members=3), **SETTINGS)
    assert (run.config.loss.strategy, run.config.loss.alpha, run.config.loss.temperature,
            run.config.loss.members) == ("dml", 0.5, 2.0, 3)
    assert len(run.members) == 3


def test_strategy_objects_take_their_own_settings_only(tmp_path):
    with pytest.raises(ConfigError, match="loss.alpha: with strategy= an object"):
        twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), strategy=TNA(), alpha=1e-3,
                    **SETTINGS)
    with pytest.raises(ConfigError, match="strategy= takes a name .* not a function"):
        twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), strategy=F.cross_entropy,
                    **SETTINGS)
    with pytest.raises(ConfigError, match="loss.strategy must be one of single, tna"):
        twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), strategy="mutual", **SETTINGS)


def test_a_strategy_registered_from_outside_is_a_config_name(tmp_path):
    class Twice(TNA):
        pass

    STRATEGIES["twice"] = Twice
    try:
        run = twinsnn.fit(mlp, toy_data(), out_dir=str(tmp_path), name="twice",
                          config={"loss.strategy": "twice"}, **SETTINGS)
        assert len(run.members) == 2 and run.config.loss.strategy == "twice"
    finally:
        del STRATEGIES["twice"]


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset
    import twinsnn

    class Smoothed(twinsnn.Strategy):
        '''Two networks, each on label-smoothed cross-entropy; no matching term.'''
        members = 2

        def __init__(self, smoothing):
            self.smoothing = smoothing
            self.epochs_compressed = []

        def loss(self, outputs, target, share=None):
            parts = {f"ce/{i}": F.cross_entropy(o, target, label_smoothing=self.smoothing)
                     for i, o in enumerate(outputs)}
            return sum(parts.values()), parts

        def set_compressed(self, compressed):
            self.epochs_compressed.append(compressed)

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = torch.randn(96, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(96), 0, 2 * y + 1] += 2.0
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                                 nn.ReLU(), nn.Linear(32, 3))
    mine = Smoothed(0.1)
    run = twinsnn.fit(make, TensorDataset(x, y), strategy=mine, epochs=2, batch_size=16,
                      mode="ternary", start_epoch=1, compile=False, progress=False,
                      out_dir=sys.argv[1], name="mine")
    record = json.loads((run.dir / "run.json").read_text())
    print(json.dumps({"members": len(run.members), "compressed": mine.epochs_compressed,
                      "strategy": record["strategy"],
                      "ce": [r["train_ce/1"] for r in run.metrics]}))
""")


@pytest.mark.slow
def test_a_strategy_defined_in_a_users_script_trains_through_fit(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["members"] == 2 and out["compressed"] == [False, True]
    assert out["strategy"] == {"class": "__main__.Smoothed", "settings": {}}
    assert out["ce"][1] < out["ce"][0]


def test_the_old_keyword_spellings_still_work_with_a_warning(tmp_path):
    common = dict(out_dir=str(tmp_path), epochs=1, batch_size=16, compile=False,
                  progress=False)
    with pytest.warns(DeprecationWarning, match=r"classes=\.\.\.\) is spelled num_classes="), \
            pytest.warns(DeprecationWarning, match=r"workers=\.\.\.\) is spelled num_workers="):
        run = twinsnn.fit("cifarnet", toy_data(), name="old", classes=3, workers=0,
                          width=0.0625, timesteps=1, **common)
    assert run.model(toy_data(4).tensors[0].unsqueeze(0)).shape[-1] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twinsnn.fit(mlp, toy_data(), name="new", num_workers=0, **common)
    with pytest.raises(ConfigError, match="both classes= and num_classes="), \
            pytest.warns(DeprecationWarning):
        twinsnn.fit("cifarnet", toy_data(), classes=3, num_classes=3, **common)
    with pytest.warns(DeprecationWarning, match="make_config"):
        cfg = twinsnn.load_config("fmnist-cpu-tna", {"alpha": 1e-3})
    assert cfg == twinsnn.make_config("fmnist-cpu-tna", alpha=1e-3)
    assert "load_config" not in twinsnn.__all__ and "make_config" in twinsnn.__all__


def test_a_strategy_is_a_strategy():
    assert all(issubclass(cls, Strategy) for cls in STRATEGIES.values())
