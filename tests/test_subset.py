"""`data.train_size`: a class-stratified, seeded random subset of the training split."""
import pytest
import torch

from twinsnn.config import load_config
from twinsnn.data import build_data
from twinsnn.data.splits import Dataset, stratified_subset
from twinsnn.errors import ConfigError


def unbalanced(counts=(50, 30, 20)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    return Dataset(torch.arange(len(y)).view(-1, 1, 1, 1), y)


def test_quotas_follow_class_shares_with_largest_remainders():
    data = unbalanced()
    subset, record = stratified_subset(data, 10, seed=0)
    assert torch.bincount(subset.y).tolist() == record["per_class"] == [5, 3, 2]
    # 7 * (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4): floors 3, 2, 1; the spare one to class 0
    subset, record = stratified_subset(data, 7, seed=0)
    assert torch.bincount(subset.y).tolist() == [4, 2, 1] and len(subset) == 7
    # the subset is real samples of the set, no repeats, in the set's order
    index = subset.x.flatten()
    assert torch.equal(index, index.unique()) and torch.equal(data.y[index], subset.y)


def test_subset_is_determined_by_its_seed_alone():
    data = unbalanced()
    a, ra = stratified_subset(data, 20, seed=0)
    b, rb = stratified_subset(data, 20, seed=0)
    c, rc = stratified_subset(data, 20, seed=1)
    assert torch.equal(a.x, b.x) and ra == rb
    assert not torch.equal(a.x, c.x) and ra["indices_sha256"] != rc["indices_sha256"]
    assert torch.bincount(c.y).tolist() == torch.bincount(a.y).tolist()


def test_size_out_of_range():
    with pytest.raises(ConfigError, match=r"data.train_size must be in \[1, 100\]"):
        stratified_subset(unbalanced(), 101, seed=0)
    with pytest.raises(ConfigError, match="not both"):
        load_config("fmnist-cpu", ["data.train_size=100", "data.train_limit=100"])


def test_same_subset_for_every_member_seed_and_config(tiny_fmnist):
    def subset(*overrides):
        cfg = load_config("fmnist-cpu", [f"data.dir={tiny_fmnist}", "data.verify=false",
                                         "data.val_size=40", "data.train_size=50", *overrides])
        data = build_data(cfg.data, cfg.model.timesteps)
        return data.train, data.split["train_subset"]

    base, record = subset()
    for overrides in (["train.seed=7"], ["loss.strategy=tna", "loss.members=3"],
                      ["train.lr=0.5", "model.width=0.25"]):
        other, other_record = subset(*overrides)
        assert torch.equal(other.x, base.x) and other_record == record
    assert record["size"] == 50 and sum(record["per_class"]) == 50
    _, reseeded = subset("data.train_subset_seed=1")
    assert reseeded["indices_sha256"] != record["indices_sha256"]
