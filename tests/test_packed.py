import json
import math
import random
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from twinsnn.config import ModelConfig
from twinsnn.errors import CheckpointError
from twinsnn.packed import export_packed, format_size_report, load_packed, size_report
from twinsnn.models import cifarnet
from twinsnn.quant import compress, quantizer

KWARGS = dict(num_classes=10, in_channels=1, width=0.125, image_size=(28, 28))
META = dict(arch="cifarnet", timesteps=5, fc_norm="batchnorm", decay=0.5, threshold=1.0,
            readout_decay=0.5, dropout=0.2, mean=[0.2860], std=[0.3530],
            dataset="fashion-mnist", **KWARGS)


def trained_like(mode="ternary", scale="none", fc_norm="batchnorm"):
    """A small compressed net with weights spread over the ternary threshold and non-trivial
    BatchNorm statistics."""
    torch.manual_seed(0)
    model = cifarnet(ModelConfig(width=0.125, fc_norm=fc_norm), 10, 1, (28, 28))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    compress(model, mode, 0.1, scale=scale)
    return model.eval()


def file_tensor_bytes(path):
    """``{key: bytes}`` from the safetensors header's data offsets."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("mode,scale,fc_norm", [("ternary", "none", "batchnorm"),
                                                ("ternary", "channel", "none"),
                                                ("ternary", "layer", "batchnorm"),
                                                ("binary", "none", "batchnorm")])
def test_round_trip_forward_is_bitwise_equal(tmp_path, mode, scale, fc_norm):
    model = trained_like(mode, scale, fc_norm)
    path = export_packed(model, tmp_path / "m.safetensors", dict(META, fc_norm=fc_norm))
    loaded, meta = load_packed(path)
    assert meta["dataset"] == "fashion-mnist" and meta["std"] == [0.3530]
    assert not loaded.training
    assert not any(quantizer(m) for m in loaded.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert expected.abs().sum() > 0
    assert torch.equal(expected, got)
    assert torch.equal(loaded.convs[1].synapse.weight, model.convs[1].synapse.weight)
    assert torch.equal(loaded.out.weight, model.out.weight)


@pytest.mark.parametrize("rule,per,delta", [("absolute", "layer", 0.1),
                                            ("mean_abs", "layer", 0.7),
                                            ("mean_abs", "channel", 0.7)])
def test_export_records_the_threshold_rule_and_its_values(tmp_path, rule, per, delta):
    model = trained_like()
    compress(model, "ternary", delta, delta_rule=rule, delta_per=per)
    path = export_packed(model, tmp_path / "m.tnn", META)
    with safe_open(str(path), framework="pt") as f:
        layers = json.loads(f.metadata()["twinsnn"])["layers"]
    for name, entry in layers.items():
        latent = dict(model.named_modules())[name].parametrizations.weight.original.detach()
        dims = tuple(range(1, latent.dim())) if per == "channel" else None
        mean_abs = latent.abs().mean(dims) if dims else latent.abs().mean().reshape(1)
        want = [delta] if rule == "absolute" else (delta * mean_abs).tolist()
        assert (entry["delta_rule"], entry["delta_per"], entry["delta"]) == (rule, per, delta)
        assert entry["threshold"] == pytest.approx(want, rel=1e-6)
    loaded, _ = load_packed(path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_model_kwargs_may_sit_under_model_key(tmp_path):
    model = trained_like()
    meta = {"model": dict(arch="cifarnet", **KWARGS), "data": {"name": "fashion-mnist"}}
    loaded, got = load_packed(export_packed(model, tmp_path / "m.safetensors", meta))
    assert got == json.loads(json.dumps(meta))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    bare = export_packed(model, tmp_path / "n.safetensors", {"width": 1.0})  # no arch
    with pytest.raises(CheckpointError, match="a network of your own"):
        load_packed(bare)
    into, _ = load_packed(bare, model=cifarnet(ModelConfig(width=0.125), 10, 1, (28, 28)))
    with torch.no_grad():
        assert torch.equal(into(x), model(x))


def test_packed_sizes_on_disk(tmp_path):
    model = trained_like()
    path = export_packed(model, tmp_path / "m.safetensors", META)
    on_disk = file_tensor_bytes(path)
    for name in ["convs.1.synapse", "convs.4.synapse", "fcs.0.synapse", "fcs.1.synapse"]:
        numel = model.get_submodule(name).weight.numel()
        layer_bytes = sum(b for k, b in on_disk.items() if k.startswith(name + "."))
        assert layer_bytes * 8 / numel <= 2.1
    assert on_disk["convs.0.synapse.weight"] == 4 * model.convs[0].synapse.weight.numel()
    assert on_disk["out.weight"] == 4 * model.out.weight.numel()
    assert on_disk["convs.1.norm.running_var"] == 4 * model.convs[1].norm.running_var.numel()

    rows = {r.layer: r for r in size_report(path)}
    assert rows == {r.layer: r for r in size_report(model)}
    assert rows["convs.1.synapse"].mode == "ternary" and rows["convs.1.synapse"].bits <= 2.1
    assert rows["out"].mode == "float32" and rows["out"].bits == 32
    assert sum(r.bytes for r in rows.values()) == sum(on_disk.values())
    table = format_size_report(list(rows.values()))
    assert "convs.1.synapse" in table and "float32" in table.splitlines()[-1]


def test_binary_takes_one_bit(tmp_path):
    model = trained_like("binary")
    path = export_packed(model, tmp_path / "m.safetensors", META)
    numel = model.fcs[0].synapse.weight.numel()
    assert file_tensor_bytes(path)["fcs.0.synapse.weight_codes"] == math.ceil(numel / 8)


def test_export_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    export_packed(trained_like(), path, META)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    load_packed(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "m.safetensors"
    export_packed(trained_like(), path, META)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return path, tensors, metadata


def test_truncated_file(tmp_path, exported):
    data = exported[0].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_packed(bad)


@pytest.mark.parametrize("data", [random.Random(1).randbytes(4096),
                                  struct.pack("<Q", 2**60) + b"{}", b"", b"\x10"])
def test_garbage_files(tmp_path, data):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_packed(bad)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothere"):
        load_packed(tmp_path / "nothere.safetensors")


def rewrite(tmp_path, exported, tensors=None, header=None, raw_header=None):
    _, base_tensors, metadata = exported
    head = json.loads(metadata["twinsnn"])
    if header:
        header(head)
    out = dict(base_tensors)
    if tensors:
        tensors(out)
    path = tmp_path / "edited.safetensors"
    save_file(out, str(path), metadata={"twinsnn": raw_header or json.dumps(head)})
    return path


@pytest.mark.parametrize("edit", [
    dict(tensors=lambda t: t.update({"convs.1.norm.running_mean": torch.zeros(7)})),
    dict(tensors=lambda t: t.update({"out.weight": torch.zeros(10, 3)})),
    dict(tensors=lambda t: t.update({"convs.2.synapse.weight_codes":
                                     torch.zeros(5, dtype=torch.uint8)})),
    dict(tensors=lambda t: t.pop("convs.3.norm.bias")),
    dict(tensors=lambda t: t.pop("fcs.0.synapse.weight_codes")),
    dict(tensors=lambda t: t.update({"extra.weight": torch.zeros(1)})),
    dict(header=lambda h: h["layers"]["convs.1.synapse"].update(shape=[1, 2, 3, 3])),
    dict(header=lambda h: h["layers"]["convs.1.synapse"].update(scale="channel")),
    dict(header=lambda h: h["layers"].pop("convs.1.synapse")),
    dict(header=lambda h: h["meta"].update(width=0.25)),
    dict(header=lambda h: h["meta"].update(arch="resnet")),
    dict(header=lambda h: h.update(version=99)),
    dict(raw_header="{not json"),
])
def test_malformed_contents(tmp_path, exported, edit):
    path = rewrite(tmp_path, exported, **edit)
    with pytest.raises(CheckpointError, match="edited.safetensors"):
        load_packed(path)
    with pytest.raises(CheckpointError):
        size_report(path)


def test_invalid_code_pattern(tmp_path, exported):
    def corrupt(t):
        codes = t["convs.1.synapse.weight_codes"].clone()
        codes[0] = 0b10
        t["convs.1.synapse.weight_codes"] = codes
    with pytest.raises(CheckpointError, match="bad packed codes"):
        load_packed(rewrite(tmp_path, exported, tensors=corrupt))


def test_plain_safetensors_without_header(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a twinsnn export"):
        load_packed(path)
