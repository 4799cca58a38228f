"""Fashion-MNIST (Xiao et al. 2017) from its four standard IDX ``.gz`` files."""
from __future__ import annotations

from pathlib import Path

from . import store
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
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
AUGMENTATION = "crop_flip"
HOW_TO_GET = ("get it with `apt-get install dataset-fashion-mnist`, or put the four "
              f"files from {URL} in a folder and pass --data-dir (or set TWINSNN_DATA)")


def _holds(folder: Path) -> Path | None:
    return folder if all((folder / name).is_file() for name, _ in FILES.values()) else None


def locate(data_dir: str | Path | None) -> Path | None:
    """The folder holding all four files (``store.locate``), or None."""
    return store.locate(data_dir, _holds, (DEBIAN_DIR,))


def download(target: Path) -> Path:
    """Fetch the four files into ``target`` (each verified before it is renamed into place)."""
    for name, sha in FILES.values():
        if not (target / name).is_file():
            store.download(URL + name, target / name, lambda tmp: read_idx_gz(tmp, sha),
                            HOW_TO_GET)
    return target


def _looked(data_dir) -> str:
    return store.looked_in(data_dir, (DEBIAN_DIR,))


def load(cfg, timesteps: int | None = None):
    """Train and test sets as ``Dataset`` of uint8 ``[N, 1, 28, 28]`` and int64 labels.

    ``cfg`` is a ``DataConfig`` (``timesteps`` matters only to event data); the files are
    found as ``store`` says, and with ``cfg.download`` fetched into ``cfg.dir`` (or ``./data``)
    ``/fashion-mnist`` when found nowhere.
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
