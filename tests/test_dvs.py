"""CIFAR10-DVS from AEDAT 2.0 recordings in the published layout, and its augmentation."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from twinsnn.config import DataConfig
from twinsnn.data import build_data, cache, cifar10_dvs, dataset_module
from twinsnn.data.transforms import AUGMENTATIONS, random_rotate_shear
from twinsnn.errors import ConfigError, DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HEADER = (b"#!AER-DAT2.0\r\n"
          b"# This is a raw AE data file - do not edit\r\n"
          b"# Data format is int32 address, int32 timestamp (8 bytes total), "
          b"repeated for each event\r\n"
          b"# Timestamps tick is 1 us\r\n"
          b"# created Thu Dec 03 11:45:41 CST 2015\r\n")


def write_aedat(path, events):
    """``events``: (t, x, y, p) rows; address bits as the DVS128: y<<1 | x<<8 | p."""
    ev = np.asarray(events, dtype=np.int64).reshape(-1, 4)
    t, x, y, p = ev.T
    words = np.stack([(x << 8) | (y << 1) | p, t], 1).astype(">u4")
    path.write_bytes(HEADER + words.tobytes())


def recording(label: int, i: int):
    """A recording identifiable by its events: ``i + 1`` ON events at (x=label, y=i)."""
    return [(1000 + 10 * k, label, i, 1) for k in range(i + 1)] + [(5000, 127, 127, 0)]


def make_dataset(root, per_class=10):
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_aedat(root / name / f"cifar10_{name}_{i}.aedat", recording(label, i))
    return root


@pytest.fixture
def dvs_root(tmp_path):
    return make_dataset(tmp_path / "CIFAR10-DVS")


def cfg(root, tmp_path, **kw):
    return DataConfig(name="cifar10-dvs", dir=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def identity(x: torch.Tensor, label: torch.Tensor) -> list[tuple[int, int]]:
    """(label, i) of each framed sample from its total ON count (see ``recording``)."""
    return [(int(c), int(n) - 1) for c, n in zip(label, x[:, :, 1].float().sum((1, 2, 3)))]


def test_registry_and_constants():
    assert dataset_module("cifar10-dvs") is cifar10_dvs
    assert cifar10_dvs.NUM_CLASSES == 10 and cifar10_dvs.AUGMENTATION in AUGMENTATIONS
    assert cifar10_dvs.MEAN == (0.0, 0.0) and cifar10_dvs.STD == (1.0, 1.0)


def test_frames_match_a_hand_count(tmp_path):
    events = [  # t, x, y, p; t spans [100, 199]: T=2 gives frames [100, 150) and [150, 199]
        (100, 0, 0, 1), (120, 1, 1, 1),  # frame 0, ON, both in pixel (0, 0) at R=64
        (149, 127, 0, 0),                # frame 0, OFF, row 0, column 63
        (150, 5, 9, 0), (199, 4, 8, 0),  # frame 1, OFF, row 4, column 2; the last event counts
        (170, 64, 127, 1),               # frame 1, ON, row 63, column 32
    ]
    path = tmp_path / "r.aedat"
    write_aedat(path, events)
    frames = cifar10_dvs.frame_events(*cifar10_dvs.read_aedat(path), timesteps=2, resolution=64)
    expected = np.zeros((2, 2, 64, 64), dtype=np.float16)
    expected[0, 1, 0, 0] = 2
    expected[0, 0, 0, 63] = 1
    expected[1, 0, 4, 2] = 2
    expected[1, 1, 63, 32] = 1
    assert frames.dtype == np.float16 and np.array_equal(frames, expected)
    at48 = cifar10_dvs.frame_events(*cifar10_dvs.read_aedat(path), timesteps=1, resolution=48)
    assert at48.sum() == len(events) and at48[0, 0, 0, 47] == 1  # x=127 -> 127*48//128 = 47
    assert at48[0, 0, 3, 1] == 2  # (x=5, y=9) and (x=4, y=8) -> row 3, column 1


def test_timestamp_wraparound_keeps_time_order(tmp_path):
    path = tmp_path / "wrap.aedat"
    write_aedat(path, [(2**32 - 10, 0, 0, 1), (2**32 - 1, 0, 0, 1), (5, 0, 0, 0), (9, 0, 0, 0)])
    frames = cifar10_dvs.frame_events(*cifar10_dvs.read_aedat(path), timesteps=2, resolution=1)
    assert frames[:, :, 0, 0].tolist() == [[0, 2], [2, 0]]  # ON first, then OFF after the wrap


def test_load_shapes_labels_and_split(dvs_root, tmp_path):
    train, test, provenance = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    assert train.x.shape == (90, 3, 2, 16, 16) and test.x.shape == (10, 3, 2, 16, 16)
    assert train.x.dtype == torch.float16 and train.y.dtype == torch.int64
    assert train.y.bincount(minlength=10).tolist() == [9] * 10
    assert test.y.bincount(minlength=10).tolist() == [1] * 10
    ids = identity(train.x, train.y) + identity(test.x, test.y)
    assert sorted(ids) == [(c, i) for c in range(10) for i in range(10)]  # disjoint, complete
    assert provenance["split"] == "random-per-class-9:1" and provenance["split_seed"] == 0
    again = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    assert identity(again[1].x, again[1].y) == identity(test.x, test.y)
    other = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16, split_seed=1), 3)
    assert identity(other[1].x, other[1].y) != identity(test.x, test.y)
    assert other[2]["split_seed"] == 1


def test_build_data_and_uneven_classes(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10)
    for i in range(10, 25):  # airplane gets 25 recordings: 22 or 23 train, round(2.5) = 2 test
        write_aedat(root / "airplane" / f"cifar10_airplane_{i}.aedat", recording(0, 0))
    (root / "airplane" / "notes.txt").write_text("not a recording")
    splits = build_data(cfg(tmp_path, tmp_path, resolution=8, val_size=5), timesteps=2)
    assert len(splits.train) + len(splits.val) == 23 + 81 and len(splits.test) == 2 + 9
    assert splits.in_channels == 2 and splits.image_size == (8, 8)
    assert splits.split["data_folder"] == str(root)


def test_cache_is_written_used_and_keyed(dvs_root, tmp_path):
    first = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    cache = sorted((tmp_path / "cache").glob("*.bin"))
    assert len(cache) == 1 and first[2]["cache_file"] == str(cache[0])
    victim = dvs_root / "cat" / "cifar10_cat_3.aedat"
    stat = victim.stat()
    victim.write_bytes(b"#!AER-DAT2.0\r\n" + b"\xff" * (stat.st_size - 14))  # same size
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)  # from the cache
    assert torch.equal(second[0].x, first[0].x) and torch.equal(second[1].y, first[1].y)
    with pytest.raises(DataError, match="cifar10_cat_3.aedat"):  # T=4: another key, reframed
        cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 4)


CACHE_WRITE = textwrap.dedent("""
    import resource, signal, sys
    from twinsnn.config import DataConfig
    from twinsnn.data import cifar10_dvs
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # the cache file is ~150 kB
    if sys.argv[3] == "killed":  # Python ignores SIGXFSZ; by default it kills the process
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    cfg = DataConfig(dir=sys.argv[1], cache_dir=sys.argv[2], resolution=16)
    train, _, _ = cifar10_dvs.load(cfg, 3)
    print(len(train))
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "write_error"])
def test_failed_cache_write_leaves_no_trusted_cache(dvs_root, tmp_path, how):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    folder = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", CACHE_WRITE, str(dvs_root), str(folder), how],
                          env=env, capture_output=True, timeout=120)
    if how == "killed":  # died in the middle of writing the temporary file
        assert done.returncode == -signal.SIGXFSZ, done.stderr.decode()[-2000:]
        assert list(folder.glob("*.tmp"))
    else:  # the write failed with EFBIG: the data is still returned, with a warning
        assert done.returncode == 0 and done.stdout.decode().split() == ["90"]
        assert b"could not write the CIFAR10-DVS cache" in done.stderr
        assert not list(folder.glob("*.tmp"))
    assert not list(folder.glob("*.bin"))
    train, test, provenance = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    assert sorted(identity(train.x, train.y) + identity(test.x, test.y)) == \
        [(c, i) for c in range(10) for i in range(10)]
    assert cache.read(*_cache_and_key(dvs_root, provenance, 3, 16)) is not None


def _cache_and_key(root, provenance, timesteps, resolution):
    key = cifar10_dvs.cache_key(root, cifar10_dvs.recordings(root), timesteps, resolution)
    return provenance["cache_file"], key


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "other_key"])
def test_damaged_cache_is_not_trusted(dvs_root, tmp_path, damage):
    train, _, provenance = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    path, key = _cache_and_key(dvs_root, provenance, 3, 16)
    raw = bytearray(open(path, "rb").read())
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "flip_byte":
        raw[-1] ^= 0x40  # same size, wrong SHA-256
    assert cache.read(path, key) is not None
    with open(path, "wb") as f:
        f.write(raw)
    if damage == "other_key":
        key = {**key, "files_sha256": "0" * 64}
        assert cache.read(path, key) is None
        return
    assert cache.read(path, key) is None
    again, _, _ = cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)  # reframed, rewritten
    assert torch.equal(again.x, train.x)
    assert cache.read(path, key) is not None


@pytest.mark.parametrize("case", ["truncated", "bad_header", "no_events", "header_unterminated"])
def test_bad_recording_names_the_file(dvs_root, tmp_path, case):
    victim = dvs_root / "ship" / "cifar10_ship_7.aedat"
    raw = victim.read_bytes()
    victim.write_bytes({
        "truncated": raw[:-3],
        "bad_header": b"#!AER-DAT3.1\r\n" + raw[len(b"#!AER-DAT2.0\r\n"):],
        "no_events": HEADER,
        "header_unterminated": b"#!AER-DAT2.0 and no newline",
    }[case])
    with pytest.raises(DataError) as err:
        cifar10_dvs.load(cfg(dvs_root, tmp_path, resolution=16), 3)
    assert str(victim) in str(err.value)
    ok, report = cifar10_dvs.check(DataConfig(dir=str(dvs_root)))
    assert not ok and f"FAILED: {victim}" in report and "99 of 100 recordings" in report


def test_bogus_huge_file_is_refused_unread(dvs_root, tmp_path):
    victim = dvs_root / "dog" / "cifar10_dog_0.aedat"
    with open(victim, "r+b") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB that are never read
    with pytest.raises(DataError, match="larger than") as err:
        cifar10_dvs.read_aedat(victim)
    assert str(victim) in str(err.value)


def test_missing_class_and_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINSNN_DATA", raising=False)
    with pytest.raises(DataError, match="CIFAR10-DVS not found") as err:
        cifar10_dvs.load(DataConfig(dir=str(tmp_path)), 3)
    assert "figshare" in str(err.value)
    root = make_dataset(tmp_path / "d", per_class=2)
    for f in (root / "frog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="frog"):
        cifar10_dvs.load(cfg(root, tmp_path), 3)
    with pytest.raises(ConfigError, match="resolution"):
        cifar10_dvs.load(cfg(root, tmp_path, resolution=129), 3)


def test_check_report(dvs_root):
    ok, report = cifar10_dvs.check(DataConfig(dir=str(dvs_root.parent)))
    assert ok and f"found {dvs_root}" in report and "airplane 10" in report
    assert "100 of 100 recordings are valid" in report and "1000 per class" in report


def test_rotate_shear_one_draw_for_all_frames():
    frame = torch.rand(6, 1, 2, 20, 20)
    x = frame.expand(6, 4, 2, 20, 20).contiguous()
    out = random_rotate_shear(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert all(torch.equal(out[:, t], out[:, 0]) for t in range(4))
    same = frame[:1].expand(6, 4, 2, 20, 20).contiguous()  # one image, six draws
    moved = random_rotate_shear(same, torch.Generator().manual_seed(1))
    assert len({tuple(m.flatten().tolist()) for m in moved}) == 6
    again = random_rotate_shear(same, torch.Generator().manual_seed(1))
    assert torch.equal(again, moved)


def test_rotate_shear_geometry():
    x = torch.rand(3, 2, 2, 9, 17)
    assert torch.equal(random_rotate_shear(x, torch.Generator(), 0.0, 0.0), x)
    point = torch.zeros(64, 1, 1, 33, 65)  # not square: the aspect must not distort the rotation
    point[:, :, :, 16, 32] = 1.0  # centre
    point[:, :, :, 15:18, 43:46] = 2.0  # a 3x3 block 12 pixels right of it
    out = random_rotate_shear(point, torch.Generator().manual_seed(2), max_shear=0.0)
    assert bool((out[:, 0, 0, 16, 32] == 1).all())  # rotation about the centre
    rows, cols = torch.meshgrid(torch.arange(33.0), torch.arange(65.0), indexing="ij")
    angles = []
    for img in out[:, 0, 0]:
        block = img == 2
        assert 6 <= int(block.sum()) <= 12
        dy, dx = 16 - rows[block].mean(), cols[block].mean() - 32
        assert abs(float(torch.hypot(dx, dy)) - 12) <= 0.75
        angles.append(torch.rad2deg(torch.atan2(dy, dx)))
    angles = torch.stack(angles)
    assert float(angles.abs().max()) <= 31 and float(angles.max() - angles.min()) > 40
    sheared = random_rotate_shear(point, torch.Generator().manual_seed(3), max_rotation=0.0)
    assert bool((sheared[:, 0, 0, 16] == point[:, 0, 0, 16]).all())  # x-shear keeps the centre row
    assert not torch.equal(sheared, point)
