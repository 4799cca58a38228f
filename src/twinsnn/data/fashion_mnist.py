"""Fashion-MNIST (Xiao et al. 2017) from its four standard IDX ``.gz`` files."""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from ..errors import DataError
from .idx import read_idx_gz
from .splits import Dataset

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
# SHA-256 of the *decompressed* IDX files: independent of how the .gz was compressed.
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte.gz",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte.gz",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
MEAN, STD = (0.2860,), (0.3530,)  # of the 60,000 training images, pixels in [0, 1]
NUM_CLASSES = 10
AUGMENTATION = "crop_flip"
HOW_TO_GET = ("get it with `apt-get install dataset-fashion-mnist`, or put the four "
              f"files from {URL} in a folder and pass --data-dir (or set TWINSNN_DATA)")


def candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    """Where to look: --data-dir if given, else $TWINSNN_DATA if set, else Debian's package
    location; each folder itself or its ``fashion-mnist`` subfolder."""
    if data_dir:
        root = Path(data_dir)
    elif os.environ.get("TWINSNN_DATA"):
        root = Path(os.environ["TWINSNN_DATA"])
    else:
        return [DEBIAN_DIR]
    return [root, root / "fashion-mnist"]


def locate(data_dir: str | Path | None) -> Path | None:
    """The first candidate folder that holds all four files, or None."""
    for d in candidate_dirs(data_dir):
        if all((d / name).is_file() for name, _ in FILES.values()):
            return d
    return None


def download(target: Path) -> Path:
    """Fetch the four files into ``target`` (verified after download, written atomically)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, sha in FILES.values():
        dest = target / name
        if dest.is_file():
            continue
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            urllib.request.urlretrieve(URL + name, tmp)
            read_idx_gz(tmp, sha)
        except DataError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"could not download {URL + name} ({e}); {HOW_TO_GET}") from None
        os.replace(tmp, dest)
    return target


def _looked(data_dir) -> str:
    return ", ".join(str(d) for d in candidate_dirs(data_dir))


def load(cfg, timesteps: int | None = None):
    """Train and test sets as ``Dataset`` of uint8 ``[N, 1, 28, 28]`` and int64 labels.

    ``cfg`` is a ``DataConfig`` (``timesteps`` matters only to event data): ``cfg.dir`` is searched first; with ``cfg.download`` the
    files are fetched into ``cfg.dir`` (or ``./data/fashion-mnist``) when found nowhere.
    """
    folder = locate(cfg.dir)
    if folder is None and cfg.download:
        folder = download(Path(cfg.dir or "data") / "fashion-mnist")
    if folder is None:
        raise DataError(f"Fashion-MNIST not found (looked in {_looked(cfg.dir)}); {HOW_TO_GET}")
    parts = {key: read_idx_gz(folder / name, sha if cfg.verify else None)
             for key, (name, sha) in FILES.items()}
    train = Dataset(parts["train_images"].unsqueeze(1), parts["train_labels"].long())
    test = Dataset(parts["test_images"].unsqueeze(1), parts["test_labels"].long())
    for split, ds in (("train", train), ("test", test)):
        if len(ds.x) != len(ds.y):
            raise DataError(f"{folder}: {split} images and labels differ in count")
    return train, test, {"data_folder": str(folder)}


def check(cfg) -> tuple[bool, str]:
    """(usable, report): where it looked, which files it found, whether their checksums match."""
    lines = [f"Fashion-MNIST: looked in {_looked(cfg.dir)}"]
    folder = locate(cfg.dir)
    if folder is None:
        return False, "\n".join(lines + [f"  not found; {HOW_TO_GET}"])
    lines.append(f"  found in {folder}")
    ok = True
    for name, sha in FILES.values():
        try:
            shape = tuple(read_idx_gz(folder / name, sha if cfg.verify else None).shape)
            lines.append(f"  {name}: {'SHA-256 ok' if cfg.verify else 'readable'}, shape {shape}")
        except DataError as e:
            ok = False
            lines.append(f"  {name}: FAILED: {e}")
    lines.append("  all files verified" if ok else f"  some files failed; {HOW_TO_GET}")
    return ok, "\n".join(lines)
