"""Hostile files: every reader ends truncated, bit-flipped and adversarial input in the
project's own one-line error (or reads it, where it stays valid), in bounded time and
memory, and never runs code a file carries."""
import builtins
import functools
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import write_idx_gz
from test_cifar import SMALL10, batch, py2_pickle, small_members, write_archive
from test_cli import assert_one_line_error, cli
from test_dvs import recording, write_aedat
from twinsnn import checkpoint, config
from twinsnn.config import Config, ModelConfig, to_flat
from twinsnn.data import cache, cifar10_dvs, idx
from twinsnn.data.cifar import parse_batch
from twinsnn.errors import CheckpointError, ConfigError, DataError, TwinsnnError
from twinsnn.inference import load_for_eval
from twinsnn.packed import METADATA_KEY, export_packed
from twinsnn.models import cifarnet
from twinsnn.quant import compress

FUZZ = settings(max_examples=100, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KWARGS = dict(num_classes=10, in_channels=1, width=0.0625, image_size=(28, 28))
META = {"model": {**KWARGS, "arch": "cifarnet", "image_size": [28, 28], "timesteps": 5},
        "config": to_flat(Config(model=ModelConfig(width=0.0625)))}
# Bounds on time below are on this process's CPU time, the reader's own work, which a busy
# machine does not change (wall time on a shared machine measures the other work too).
SPECIAL = [b"\x00", b"\xff", b"\x00" * 4, b"\xff" * 4, b"\x7f" + b"\xff" * 7, b"\xff" * 8,
           b"99999999999", b"-1", b"[[[[", b'"', b"\n", b"\x80\x02"]


@dataclass(frozen=True)
class Mutation:
    """One change to a valid file (printed, not the file, when a case fails): ``cut`` it at
    ``at``, ``flip`` the (offset, bit) pairs ``bits``, or ``overwrite``/``insert`` ``data``."""

    kind: str
    at: int = 0
    data: bytes = b""
    bits: tuple = ()

    def __call__(self, seed: bytes) -> bytes:
        if self.kind == "cut":
            return seed[:self.at]
        if self.kind == "flip":
            raw = bytearray(seed)
            for at, bit in self.bits:
                raw[at] ^= 1 << bit
            return bytes(raw)
        end = self.at + len(self.data) if self.kind == "overwrite" else self.at
        return seed[:self.at] + self.data + seed[end:]


def mutations(seed: bytes, hot: int = 1024):
    """Mutations of ``seed``; two thirds of their offsets fall in its first or last ``hot``
    bytes, where formats keep their headers."""
    n = len(seed)
    at = st.one_of(st.integers(0, min(hot, n) - 1), st.integers(max(0, n - hot), n - 1),
                   st.integers(0, n - 1))
    data = st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=8))
    bits = st.lists(st.tuples(at, st.integers(0, 7)), min_size=1, max_size=6).map(tuple)
    return st.one_of(st.builds(Mutation, st.just("cut"), st.integers(0, n - 1)),
                     st.builds(Mutation, st.just("flip"), bits=bits),
                     st.builds(Mutation, st.sampled_from(["overwrite", "insert"]), at, data))


def mutant(data, seed: bytes, hot: int = 1024) -> bytes:
    """``seed`` changed by a mutation drawn from ``data``."""
    return data.draw(mutations(seed, hot))(seed)


def outcome(read, *args, name: str | None = None):
    """What ``read(*args)`` returns, or None when it raised the project's own error: one line
    that names ``name``. Any other exception fails the test."""
    try:
        return read(*args)
    except TwinsnnError as e:
        message = str(e)
        assert message and "\n" not in message, message
        assert name is None or name in message, message
        return None


def traced(read, *args, name: str | None = None):
    """``outcome(...)`` and the peak of memory traced while it ran, in bytes."""
    tracemalloc.start()
    try:
        result = outcome(read, *args, name=name)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bound(raw: bytes) -> int:
    """Memory a reader may use for input ``raw``: a small multiple of its size."""
    return (16 << 20) + 64 * len(raw)


def tiny_model():
    torch.manual_seed(0)
    return cifarnet(ModelConfig(width=0.0625), 10, 1, (28, 28))


def idx_bytes() -> bytes:
    shape = (3, 4, 5)
    return bytes([0, 0, 0x08, 3]) + struct.pack(">III", *shape) + bytes(range(60))


@functools.cache
def seeds() -> dict:
    """A valid file of every format, written by the project's own writers."""
    with tempfile.TemporaryDirectory() as tmp:
        return _write_seeds(Path(tmp))


def _write_seeds(folder: Path) -> dict:
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.9)
    checkpoint.save_checkpoint(folder / "checkpoint.pt", {
        "config": META["config"], "meta": META, "epoch": 1, "step": 0,
        "members": [model.state_dict()], "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": {}, "sums": {}})
    checkpoint.save_model(folder / "model.safetensors", model, META)
    packed = tiny_model()
    compress(packed, "ternary", 0.1)
    export_packed(packed, folder / "model.tnn", META)
    write_idx_gz(folder / "idx.gz", np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    write_archive(folder / "cifar.tar.gz", "cifar-10-batches-py", small_members())
    write_aedat(folder / "rec.aedat", recording(3, 18))
    raw = {name: (folder / name).read_bytes() for name in
           ("checkpoint.pt", "model.safetensors", "model.tnn", "idx.gz", "cifar.tar.gz",
            "rec.aedat")}
    raw["idx"] = idx_bytes()
    raw["batch"] = py2_pickle(batch(6, [0, 1, 2, 3, 4, 9]))
    raw["yaml"] = resources.files("twinsnn.configs").joinpath("fmnist-cpu.yaml").read_bytes()
    return raw


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mutants")


@pytest.fixture(scope="module", autouse=True)
def _seeds_before_any_deadline():
    """The seed files are written once, before the first example: their writing is not part
    of any reader's time."""
    seeds()


# ---- property-based: every reader, mutated files --------------------------------------

@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_idx_bytes(data):
    raw = mutant(data, seeds()["idx"], hot=64)
    result, peak = traced(idx.parse_idx, raw, "mutant.idx", name="mutant.idx")
    if result is not None:
        assert result.dtype == torch.uint8 and result.numel() == len(raw) - 4 - 4 * result.dim()
    assert peak < bound(raw)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_idx_gz_files(workdir, data):
    if data.draw(st.booleans(), label="mutate inside the gzip stream"):
        raw = gzip.compress(mutant(data, seeds()["idx"], hot=64))
    else:
        raw = mutant(data, seeds()["idx.gz"], hot=64)
    path = workdir / "mutant-idx3-ubyte.gz"
    path.write_bytes(raw)
    _, peak = traced(idx.read_idx_gz, path, name=str(path))
    assert peak < bound(raw)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_cifar_batch_pickles(data):
    raw = mutant(data, seeds()["batch"], hot=256)
    result, peak = traced(parse_batch, raw, "mutant_batch", 6, "labels", 10, name="mutant_batch")
    if result is not None:
        assert result[0].shape == (6, 3, 32, 32) and result[1].shape == (6,)
    assert peak < bound(raw)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_cifar_archives(workdir, data):
    raw = mutant(data, seeds()["cifar.tar.gz"])
    path = workdir / "cifar-10-python.tar.gz"
    path.write_bytes(raw)
    result, peak = traced(SMALL10.read, path, False, name=str(path))
    if result is not None:
        assert [len(split) for split in result] == [10, 5]
    assert peak < bound(raw)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_aedat_recordings(workdir, data):
    raw = mutant(data, seeds()["rec.aedat"], hot=256)
    path = workdir / "cifar10_cat_18.aedat"
    path.write_bytes(raw)

    def frames(path):
        events = cifar10_dvs.read_aedat(path)
        return len(events[0]), cifar10_dvs.frame_events(*events, timesteps=5, resolution=48)

    result, peak = traced(frames, path, name=str(path))
    if result is not None:
        count, framed = result
        assert framed.shape == (5, 2, 48, 48) and framed.sum() == count
    assert peak < bound(raw)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["checkpoint.pt", "model.safetensors", "model.tnn"])
@FUZZ
@given(data=st.data())
def test_checkpoints_and_models(workdir, kind, data):
    raw = mutant(data, seeds()[kind], hot=4096)
    path = workdir / f"mutant-{kind}"
    path.write_bytes(raw)
    result = outcome(load_for_eval, path, name=str(path))
    if result is not None:
        model, cfg = result
        assert isinstance(model, torch.nn.Module) and isinstance(cfg, Config)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8)
yaml_documents = st.dictionaries(
    st.sampled_from(["name", "out_dir", "data", "model", "train", "loss", "quant", "other"]),
    yaml_values | st.dictionaries(st.sampled_from(["lr", "epochs", "width", "name", "mode",
                                                   "strategy", "seed", "dir", "compile"]),
                                  yaml_values, max_size=4),
    max_size=4).map(lambda tree: yaml.safe_dump(tree).encode())


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_yaml_configs(workdir, data):
    source = data.draw(st.one_of(mutations(seeds()["yaml"], hot=256), yaml_documents,
                                 st.text(max_size=200).map(str.encode)))
    raw = source(seeds()["yaml"]) if isinstance(source, Mutation) else source
    path = workdir / "mutant.yaml"
    path.write_bytes(raw)
    result, peak = traced(config.load_config, str(path))
    assert result is None or isinstance(result, Config)
    assert peak < bound(raw)


# ---- adversarial headers: refused before allocating what they claim ---------------------

def test_idx_header_claiming_10_to_the_12_items(tmp_path):
    raw = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 10**6, 10**6) + bytes(16)
    start = time.process_time()
    with pytest.raises(DataError, match="1000000000000"):
        idx.parse_idx(raw, "claims.idx")
    path = tmp_path / "claims-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    result, peak = traced(idx.read_idx_gz, path, name=str(path))
    assert result is None and peak < 4 << 20
    assert time.process_time() - start < 2


def _short(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data


def _array_pickle(count: int, dtype: bytes, flags: int, contents: bytes) -> bytes:
    """A batch whose ``data`` is a numpy array of ``count`` elements of ``dtype``, built as
    numpy pickles arrays, with the dtype's pickled ``flags`` and the array's ``contents``."""
    return (b"\x80\x02}" + _short(b"data")
            + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _short(b"b")
            + b"\x87R(K\x01J" + struct.pack("<i", count) + b"\x85"
            + b"cnumpy\ndtype\n" + _short(dtype) + b"\x89\x88\x87R"
            + b"(K\x03" + _short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffJ"
            + struct.pack("<i", flags) + b"tb\x89" + contents + b"tbs.")


@pytest.mark.slow
@pytest.mark.parametrize("raw", [
    b"\x80\x02}r\x00\x00\x00\x80.",  # memo slot 2**31: the C unpickler would size its memo to it
    _array_pickle(10**9, b"O8", 63, b"]"),  # object array: numpy allocates before checking
    _array_pickle(10**9, b"u1", 63, b"]"),  # crafted dtype flags: numpy's __setstate__ crashes
    _array_pickle(10**9, b"V8", 0, _short(b"x")),
    _array_pickle(10**9, b"u1", 0, _short(b"x")),  # a billion bytes claimed, one held
], ids=["memo", "object-dtype", "dtype-flags", "void-dtype", "short-data"])
def test_cifar_pickle_bombs(raw):
    result, peak = traced(parse_batch, raw, "bomb_batch", 6, "labels", 10, name="bomb_batch")
    assert result is None and peak < 4 << 20


def test_aedat_endless_comment_header(tmp_path):
    path = tmp_path / "cifar10_cat_0.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n" + b"#\n" * (2 << 20))
    start = time.process_time()
    with pytest.raises(DataError, match="comment header"):
        cifar10_dvs.read_aedat(path)
    assert time.process_time() - start < 2


@pytest.mark.parametrize("damage", ["nested", "binary", "other-key", "empty", "flipped",
                                    "huge-shape", "object-dtype"])
def test_damaged_cache_is_ignored(tmp_path, damage):
    key = cifar10_dvs.cache_key(tmp_path, [], timesteps=2, resolution=4)
    path = tmp_path / "cache.bin"
    cache.write(path, key, [np.zeros(1, np.int64), np.ones((1, 2, 2, 4, 4), np.float16)])
    assert cache.read(path, key) is not None
    raw = path.read_bytes()
    path.write_bytes({"nested": b"[" * 4000 + raw[raw.index(b"\n"):], "binary": b"\xff\xfe\n" + raw,
                      "other-key": raw.replace(b'"timesteps": 2', b'"timesteps": 3'),
                      "empty": b"", "flipped": raw[:-1] + bytes([raw[-1] ^ 1]),
                      "huge-shape": raw.replace(b"[1, 2, 2, 4, 4]", b"[1, 2, 2, 4, 4000000000000]"),
                      "object-dtype": raw.replace(b'"<f2"', b'"|O8"')}[damage])
    assert cache.read(path, key) is None


def _resave(path, meta_edit=None, header_edit=None):
    """Rewrite a safetensors file with its tensors kept and its metadata edited."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    if meta_edit:
        metadata["meta"] = json.dumps(meta_edit(json.loads(metadata["meta"])))
    if header_edit:
        metadata[METADATA_KEY] = header_edit(metadata[METADATA_KEY])
    save_file(tensors, str(path), metadata=metadata)


def _wide(meta: dict) -> dict:
    return {**meta, "model": {**meta["model"], "width": 64.0}}


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from twinsnn.errors import TwinsnnError
    from twinsnn.inference import load_for_eval
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    soft = vm + (3 << 30)  # a reader that did allocate fails here instead of exhausting RAM
    resource.setrlimit(resource.RLIMIT_AS, (soft if hard < 0 else min(soft, hard), hard))
    load_for_eval(Path(sys.argv[1]))  # warm up: first loads set up caches
    for name in sys.argv[2:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_for_eval(Path(name))
            message = "loaded"
        except TwinsnnError as e:
            message = str(e)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"file": name, "message": message, "grown_kib": grown}))
""")


@pytest.mark.slow
def test_untrusted_models_are_sized_before_they_are_built(tmp_path):
    """Files describing a network of ~150 GB, or inflating 1000-fold, are refused without
    the memory: measured in a fresh process, whose peak memory is not yet inflated."""
    good = tmp_path / "good.pt"
    good.write_bytes(seeds()["checkpoint.pt"])
    files = {}
    files["wide.safetensors"] = tmp_path / "wide.safetensors"
    files["wide.safetensors"].write_bytes(seeds()["model.safetensors"])
    _resave(files["wide.safetensors"], meta_edit=_wide)
    files["wide.tnn"] = tmp_path / "wide.tnn"
    files["wide.tnn"].write_bytes(seeds()["model.tnn"])
    _resave(files["wide.tnn"], header_edit=lambda h: json.dumps(
        {**json.loads(h), "meta": _wide(json.loads(h)["meta"])}))
    state = checkpoint.load_checkpoint(good)
    files["wide.pt"] = tmp_path / "wide.pt"
    torch.save({**state, "meta": _wide(state["meta"])}, files["wide.pt"])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in
                  cifarnet(ModelConfig(width=64.0), 10, 1, (28, 28)).state_dict().items()}
    files["strided.pt"] = tmp_path / "strided.pt"  # weights of that size, all views of 1 float
    torch.save({**state, "meta": _wide(state["meta"]),
                "members": [{k: torch.zeros(1).expand(s) if s else torch.zeros(())
                             for k, s in shapes.items()}]}, files["strided.pt"])
    buffer = io.BytesIO()
    torch.save({**state, "members": [{"w": torch.zeros(64 << 20, dtype=torch.uint8)}]}, buffer)
    files["deflated.pt"] = tmp_path / "deflated.pt"
    with zipfile.ZipFile(buffer) as plain, \
            zipfile.ZipFile(files["deflated.pt"], "w", zipfile.ZIP_DEFLATED) as packed:
        for name in plain.namelist():
            packed.writestr(name, plain.read(name))
    assert files["deflated.pt"].stat().st_size < 1 << 20
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, good, *files.values()],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {json.loads(line)["file"]: json.loads(line) for line in proc.stdout.splitlines()}
    expected = {"wide.safetensors": "describes a model of", "wide.tnn": "describes a model of",
                "wide.pt": "describes a model of", "strided.pt": "describes a model of",
                "deflated.pt": "compressed records"}
    for name, fragment in expected.items():
        result = results[str(files[name])]
        assert fragment in result["message"] and str(files[name]) in result["message"], result
        assert result["grown_kib"] < 48 << 10, result


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: {**m, "model": {**m["model"], "width": float("inf")}}, "cannot build"),
    (lambda m: {**m, "model": {**m["model"], "width": "wide"}}, "cannot build"),
    (lambda m: {**m, "model": {**m["model"], "image_size": [27, 28]}}, "cannot build"),
    (lambda m: {**m, "model": {**m["model"], "arch": "resnet"}}, "cannot build"),
    (lambda m: {**m, "model": [1, 2]}, "cannot build"),
    (lambda m: {**m, "model": {**m["model"], "width": 0.03125}}, "do not fit"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "no training config"),
    (lambda m: {**m, "config": {"train.lr": "fast"}}, "config is not valid"),
    (lambda m: [m], "not a JSON object"),
], ids=["inf-width", "str-width", "odd-size", "arch", "not-dict", "other-width", "no-config",
        "bad-config", "list"])
def test_model_header_values(tmp_path, edit, fragment):
    path = tmp_path / "model.safetensors"
    path.write_bytes(seeds()["model.safetensors"])
    _resave(path, meta_edit=edit)
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_for_eval(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["model.safetensors", "model.tnn"])
def test_deeply_nested_json_headers(tmp_path, kind):
    path = tmp_path / kind
    path.write_bytes(seeds()[kind])
    nested = "[" * 100000 + "]" * 100000
    if kind == "model.tnn":
        _resave(path, header_edit=lambda h: nested)
    else:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = {**f.metadata(), "meta": nested}
        save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_for_eval(path)


@pytest.mark.parametrize("edit,fragment", [
    (lambda s: [s], "not a twinsnn training checkpoint"),
    (lambda s: {**s, "members": "weights"}, "not a twinsnn training checkpoint"),
    (lambda s: {**s, "members": []}, "not a twinsnn training checkpoint"),
    (lambda s: {**s, "config": ["train.lr"]}, "not a twinsnn training checkpoint"),
    (lambda s: {**s, "meta": {}}, "not a twinsnn training checkpoint"),
    (lambda s: {**s, "epoch": -1}, "not a twinsnn training checkpoint"),
    (lambda s: {**s, "config": {"train.lr": "fast"}}, "config is not valid"),
    (lambda s: {**s, "members": [{f"{k}_": v for k, v in s["members"][0].items()}]},
     "do not fit"),
    (lambda s: {**s, "members": [{"w": torch.zeros(3)}]}, "more than the 12 bytes"),
], ids=["list", "str-members", "no-members", "list-config", "no-model", "epoch", "bad-config",
        "renamed", "too-few"])
def test_checkpoint_structure(tmp_path, edit, fragment):
    good = tmp_path / "good.pt"
    good.write_bytes(seeds()["checkpoint.pt"])
    path = tmp_path / "checkpoint.pt"
    torch.save(edit(checkpoint.load_checkpoint(good)), path)
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_for_eval(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_legacy_torch_format_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    good.write_bytes(seeds()["checkpoint.pt"])
    path = tmp_path / "legacy.pt"
    torch.save(checkpoint.load_checkpoint(good), path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a readable twinsnn checkpoint"):
        checkpoint.load_checkpoint(path)


# ---- files that carry code -------------------------------------------------------------

class RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class ExecsPython:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def evil_checkpoint(path, payload) -> None:
    """A checkpoint that is valid in every other way and runs ``payload`` when unpickled."""
    good = path.with_name("good.pt")
    good.write_bytes(seeds()["checkpoint.pt"])
    torch.save({**checkpoint.load_checkpoint(good), "note": payload}, path)


@pytest.mark.parametrize("kind", ["system", "exec"])
def test_checkpoint_that_runs_code_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = RunsCommand(f"touch {marker}") if kind == "system" else ExecsPython(marker)
    path = tmp_path / "evil.pt"
    evil_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match="not a readable twinsnn checkpoint") as err:
        checkpoint.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: a plain unpickler runs the payload
    assert marker.exists()


def test_checkpoint_that_runs_code_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil_checkpoint(path, RunsCommand(f"touch {marker}"))
    assert_one_line_error(cli(capsys, "eval", path), str(path), "not a readable")
    assert_one_line_error(cli(capsys, "export", path, "-o", tmp_path / "out.tnn"), str(path))
    assert not marker.exists() and not (tmp_path / "out.tnn").exists()


# ---- YAML configs ----------------------------------------------------------------------

def _laughs(levels: int = 9) -> str:
    """Nested aliases: a few hundred bytes that stand for 10**levels strings."""
    lists = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    lists += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "name: [" + ", ".join(lists) + "]\n"


@pytest.mark.parametrize("text,fragment", [
    ("train: !!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML"),
    ("train: !!python/object:os.system {}\n", "not valid YAML"),
    ("model: !!python/name:os.system\n", "not valid YAML"),
    (_laughs(), "name must be str"),
    ("model: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    ("train:\n  seed: 0x" + "f" * 5000 + "\n", "must fit in 64 bits"),
    ("train:\n  lr: 0x" + "f" * 400 + "\n", "train.lr must be float"),
    ("train:\n  seed: " + "1" * 5000 + "\n", "not valid YAML"),
    ("name: 0x" + "f" * 5000 + "\n", "name must be str"),
    ("1: 2\n", "config keys are names"),
    ("name: a\x00b\n", "not valid YAML"),
    ("# padding\n" * 20000, "larger than"),
], ids=["apply", "object", "name", "laughs", "nested", "big-int", "big-float", "long-decimal",
        "big-str", "int-key", "nul", "huge"])
def test_hostile_yaml_is_one_line(tmp_path, text, fragment):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    start = time.process_time()
    with pytest.raises(ConfigError, match=fragment) as err:
        config.load_config(str(path))
    assert time.process_time() - start < 5
    assert "\n" not in str(err.value) and len(str(err.value)) < 2000
    assert not marker.exists()


def test_invalid_utf8_yaml(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        config.load_config(str(path))


def test_hostile_yaml_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_one_line_error(cli(capsys, "train", "--config", path), str(path))
    assert not marker.exists()
