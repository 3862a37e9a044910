"""Fashion-MNIST (or scikit-learn's digits, embedded, no download) as a LightningDataModule.

Fashion-MNIST is read from the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
in ``data_dir``, or (when ``data_dir`` is None) the first folder that has them among
``$SEQMIX_DATA/fashion-mnist``, ``./data/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``
(the Debian package ``dataset-fashion-mnist``); with ``download=True`` the files a folder lacks are
fetched from the dataset's repository (``prepare_data``).

Training images get a random crop after zero padding and a horizontal flip (Fashion-MNIST; not
digits, unless ``flip`` says so), and optionally
(``erase_prob``) timm's random erasing of a rectangle with per-pixel noise after normalisation
(the BiFormer / MambaOut papers' ImageNet recipe: probability 0.25); every split is
normalised by the mean and standard deviation of the training images (saved in checkpoints,
so ``predict`` normalises the same way). The validation split is held out of the 60k
training images (``val_size``, fixed by ``seed``); the test split is the official 10k.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from seqmix.apps.data import Split, SplitLoaders
from seqmix.apps.files import data_root

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_FILE_NAMES = [name for pair in FASHION_FILES.values() for name in pair]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# the canonical files: the dataset's own repository (github.com/zalandoresearch/fashion-mnist, data/fashion)
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for when no ``data_dir`` is given, in order."""
    return [data_root("fashion-mnist"), Path("data/fashion-mnist"), DEBIAN_DIR]


def find_fashion_mnist(data_dir: str | Path | None) -> Path:
    """The folder with the four Fashion-MNIST files, or a clear error saying how to get them."""
    candidates = [Path(data_dir)] if data_dir is not None else fashion_mnist_dirs()
    for folder in candidates:
        if all((folder / name).is_file() for name in FASHION_FILE_NAMES):
            return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(
        f"Fashion-MNIST not found: need {FASHION_FILE_NAMES} in one folder; looked in {looked}. Get it with "
        "`apt-get install dataset-fashion-mnist` (Debian; files in /usr/share/datasets/fashion-mnist) or download "
        "them from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder given as "
        "data.data_dir, or let fit fetch them with --data.download true; or use data.dataset=digits (scikit-learn's, "
        "no download)")


def download_fashion_mnist(folder: Path) -> Path:
    """Fetch the four files from :data:`FASHION_URL` into ``folder`` (those it lacks; each written whole or
    not at all) and return ``folder``; :func:`read_idx` checks them when ``setup`` reads them."""
    import urllib.request

    from seqmix.apps.files import atomic_write

    for name in FASHION_FILE_NAMES:
        if (folder / name).is_file():
            continue
        url = FASHION_URL + name
        try:
            atomic_write(folder / name, lambda tmp: urllib.request.urlretrieve(url, tmp))
        except OSError as err:  # urllib's URLError included
            raise FileNotFoundError(f"could not download Fashion-MNIST's {name} from {url} ({err}); copy the four "
                                    f"files {FASHION_FILE_NAMES} into {folder} by hand, or apt-get install "
                                    "dataset-fashion-mnist")
    return folder


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: images ``[N, rows, cols]`` or labels ``[N]``."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path}: not a uint8 IDX file of labels or images (magic {raw[:4].hex()}); "
                         "the download may be corrupt")
    dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}")
    return body.reshape(dims)  # [N] (labels) or [N, 28, 28] (images)


def load_fashion_mnist(data_dir: str | Path | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train": (images uint8 [60000, 28, 28], labels int64), "test": (... [10000, ...])}``."""
    folder = find_fashion_mnist(data_dir)
    out = {}
    for split, (images, labels) in FASHION_FILES.items():
        x, y = read_idx(folder / images), read_idx(folder / labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{folder}: {images} and {labels} do not pair up ({x.shape} vs {y.shape})")
        out[split] = torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))
    return out


def load_digits(img_size: int, seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """scikit-learn's 8x8 digits (1797 images) upscaled to ``img_size``, uint8, a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)[:, 0]  # [N, S, S]
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return {"train": (x[order[:cut]], y[order[:cut]]), "test": (x[order[cut:]], y[order[cut:]])}


class ImageDataset(Dataset):
    """uint8 images ``[N, S, S]`` -> normalised float ``[1, S, S]``, with optional augmentation."""

    def __init__(self, images: Tensor, labels: Tensor, mean: float, std: float, *, augment: bool,
                 crop_padding: int, flip: bool, erase_prob: float = 0.0):
        from timm.data.random_erasing import RandomErasing

        self.images, self.labels = images, labels
        self.mean, self.std = mean, std
        self.augment, self.pad, self.flip = augment, crop_padding, flip
        # timm's random erasing (python's `random`, seeded by seed_everything); on the normalised image
        self.erase = RandomErasing(erase_prob, mode="pixel", device="cpu") if augment and erase_prob > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i].float()[None] / 255.0  # [1, S, S]
        if self.augment:
            s = x.shape[-1]
            if self.pad:
                padded = F.pad(x, (self.pad,) * 4)  # [1, S + 2p, S + 2p]
                top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = padded[:, top: top + s, left: left + s]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x, self.labels[i]


class ImageDataModule(SplitLoaders):
    """Fashion-MNIST or digits; ``in_chans``, ``n_classes``, ``img_size`` are linked to the model.

    Args:
        dataset: ``"fashion_mnist"`` (files, see the module docstring) or ``"digits"`` (embedded).
        data_dir: the folder with the Fashion-MNIST files; None searches the default places.
        img_size: side of the images given to the model (Fashion-MNIST: must be 28; digits: upscaled).
        val_size: training images held out for validation.
        train_limit: use only the first ``train_limit`` training images (short runs); None = all.
        erase_prob: probability of random erasing per training image (0 = off; DeiT's recipe: 0.25).
        flip: random horizontal flips of training images; None = on for Fashion-MNIST, off for digits
            (a mirrored digit is another glyph, or none).
        download: when Fashion-MNIST is not found, fetch it from its canonical source (:data:`FASHION_URL`)
            into ``data_dir`` (None: ``$SEQMIX_DATA/fashion-mnist``, else ``./data/fashion-mnist``) in
            ``prepare_data``; off by default, so that a missing file is an error and nothing reaches the network.
    """

    def __init__(self, dataset: Literal["fashion_mnist", "digits"] = "fashion_mnist", data_dir: str | None = None,
                 img_size: int = 28, batch_size: int = 128, val_size: int = 5000, train_limit: int | None = None,
                 augment: bool = True, crop_padding: int = 2, flip: bool | None = None, erase_prob: float = 0.0,
                 num_workers: int = 0, seed: int = 0, download: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if dataset not in ("fashion_mnist", "digits"):
            raise ValueError(f"ImageDataModule: dataset={dataset!r} is unknown; choose 'fashion_mnist' or 'digits'")
        if dataset == "fashion_mnist" and img_size != 28:
            raise ValueError(f"ImageDataModule: Fashion-MNIST images are 28x28, got img_size={img_size}")
        if val_size < 0 or crop_padding < 0 or (train_limit is not None and train_limit < 1):
            raise ValueError("ImageDataModule: need val_size >= 0, crop_padding >= 0, train_limit >= 1 or None; "
                             f"got {val_size}, {crop_padding}, {train_limit}")
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"ImageDataModule: erase_prob is a probability in [0, 1] (0 = off, DeiT: 0.25), "
                             f"got {erase_prob}")
        self.dataset, self.data_dir, self.img_size = dataset, data_dir, img_size
        self.val_size, self.train_limit = val_size, train_limit
        flip = dataset == "fashion_mnist" if flip is None else flip
        self.augment, self.crop_padding, self.flip, self.erase_prob = augment, crop_padding, flip, erase_prob
        self.seed, self.download = seed, download
        self.in_chans, self.n_classes = 1, 10
        self.class_names = FASHION_CLASSES if dataset == "fashion_mnist" else tuple(str(i) for i in range(10))
        self.mean = self.std = None

    def prepare_data(self) -> None:
        """Fetch Fashion-MNIST when ``download`` is on and it is not found (Lightning calls this once per node)."""
        if self.dataset != "fashion_mnist" or not self.download:
            return
        try:
            find_fashion_mnist(self.data_dir)
        except FileNotFoundError:
            download_fashion_mnist(Path(self.data_dir) if self.data_dir is not None else fashion_mnist_dirs()[0])

    def setup(self, stage: str | None = None) -> None:
        if self.mean is not None and hasattr(self, "train_set"):
            return
        raw = load_fashion_mnist(self.data_dir) if self.dataset == "fashion_mnist" else load_digits(self.img_size,
                                                                                                      self.seed)
        x, y = raw["train"]
        if self.val_size >= len(x):
            raise ValueError(f"ImageDataModule: val_size={self.val_size} leaves no training images of the {len(x)} "
                             f"that {self.dataset} has; hold out fewer, e.g. --data.val_size {len(x) // 10}")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size:]
        if self.train_limit is not None:
            train = train[: self.train_limit]
        pixels = x[train].float() / 255.0
        self.mean, self.std = float(pixels.mean()), float(pixels.std())
        common = {"crop_padding": self.crop_padding, "flip": self.flip}
        self.train_set = ImageDataset(x[train], y[train], self.mean, self.std, augment=self.augment,
                                      erase_prob=self.erase_prob, **common)
        self.val_set = ImageDataset(x[val], y[val], self.mean, self.std, augment=False, **common)
        self.test_set = ImageDataset(*raw["test"], self.mean, self.std, augment=False, **common)

    def split_data(self, split: Split) -> ImageDataset:
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set, "predict": self.test_set}[split]

    def state_dict(self) -> dict:
        """Saved in checkpoints: the shuffle state and what ``predict`` needs to read images like the training data."""
        return {**super().state_dict(), "mean": self.mean, "std": self.std, "class_names": list(self.class_names),
                "dataset": self.dataset, "img_size": self.img_size, "in_chans": self.in_chans}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state["mean"], state["std"]
        super().load_state_dict(state)
