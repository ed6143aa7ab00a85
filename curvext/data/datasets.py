"""Datasets for the evaluation: sklearn digits, MNIST (or any dataset in MNIST's IDX layout, such
as Fashion-MNIST) from IDX files, a folder of images.

Every loader returns a frozen :class:`Dataset` of float32 images in ``[0, 1]`` with shape
``(N, C, H, W)`` and int64 labels ``(N,)`` (``-1`` where there are none). Nothing is downloaded:
digits ship inside scikit-learn, IDX datasets are read from a directory the user points at (the
four files named as MNIST's, gzipped or not, with an optional ``SHA256SUMS`` that is checked).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "load_digits", "load_idx", "load_mnist", "load_image_folder", "MNIST_FILES", "IMAGE_SUFFIXES"]

#: IDX file stems per split (``.gz`` or raw files are accepted), MNIST's names, which
#: Fashion-MNIST, KMNIST and others keep.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, repr=False)
class Dataset(ShortRepr):
    """Images and labels.

    Attributes:
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64; ``-1`` when unknown (image folders).
        names: file names (image folders) or ``None``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None) -> Dataset:
        """The first ``n`` items (all when ``n`` is None)."""
        if n is None:
            return self
        _check_positive_int(n, "n")
        names = None if self.names is None else self.names[:n]
        return Dataset(self.images[:n], self.labels[:n], names)


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_digits(split: str = "test", *, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """sklearn's bundled 8x8 digits as ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` (pixels / 16).

    The train/test split is a seeded stratified split of the 1797 images, so the same
    ``(test_fraction, seed)`` always gives the same images.
    """
    from sklearn.datasets import load_digits as _sk_load
    from sklearn.model_selection import train_test_split

    _check_split(split)
    if not (isinstance(test_fraction, float) and 0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    bunch = _sk_load()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    sel = np.sort(tr if split == "train" else te)
    return Dataset(torch.from_numpy(np.ascontiguousarray(x[sel])), torch.from_numpy(y[sel]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        p = data_dir / name
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"IDX file {stem}.gz (or {stem}) not found in {data_dir}; expected the standard (MNIST) IDX files "
        f"{', '.join(s + '.gz' for pair in MNIST_FILES.values() for s in pair)}")


def _verify_checksum(path: Path) -> None:
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    if path.name not in expected:
        logger.warning("%s has no entry in %s; not verified", path.name, sums)
        return
    got = _sha256(path)
    if got != expected[path.name]:
        raise ValueError(f"SHA256 mismatch for {path}: expected {expected[path.name]}, got {got}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file has {body.size}")
    return body.reshape(dims)


def load_idx(data_dir: str | os.PathLike, split: str = "test", *, limit: int | None = None,
             verify: bool = True) -> Dataset:
    """A dataset in MNIST's IDX layout (MNIST, Fashion-MNIST, KMNIST, ...) as ``(N, C, H, W)``
    float32 in ``[0, 1]``: ``C = 1`` for ``(N, H, W)`` image files, ``C`` for ``(N, H, W, C)`` ones.

    Args:
        data_dir: directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``"train"`` or ``"test"``.
        limit: keep only the first ``limit`` images (the file order).
        verify: check files against ``SHA256SUMS`` in the directory when that file exists.

    Raises:
        FileNotFoundError: naming the missing directory or file.
        ValueError: bad split, checksum mismatch, malformed IDX, image/label count mismatch.
    """
    _check_split(split)
    if limit is not None:
        _check_positive_int(limit, "limit")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"IDX directory {root} does not exist")
    img_path, lab_path = (_find_idx(root, s) for s in MNIST_FILES[split])
    if verify:
        for p in (img_path, lab_path):
            _verify_checksum(p)
    imgs, labs = _read_idx(img_path), _read_idx(lab_path)
    if imgs.ndim not in (3, 4) or labs.ndim != 1 or imgs.shape[0] != labs.shape[0]:
        raise ValueError(f"IDX shapes do not match: images {imgs.shape} (expected (N, H, W) or (N, H, W, C)), "
                         f"labels {labs.shape}")
    if limit is not None:
        imgs, labs = imgs[:limit], labs[:limit]
    x = torch.from_numpy(imgs.astype(np.float32) / 255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return Dataset(x.contiguous(), torch.from_numpy(labs.astype(np.int64)))


def load_mnist(data_dir: str | os.PathLike, split: str = "test", *, limit: int | None = None,
               verify: bool = True) -> Dataset:
    """MNIST from a directory of IDX files as ``(N, 1, 28, 28)`` float32 in ``[0, 1]``:
    :func:`load_idx` (train 60000 images, test 10000)."""
    return load_idx(data_dir, split, limit=limit, verify=verify)


def load_image_folder(folder: str | os.PathLike, *, size: int | tuple[int, int], channels: int = 3,
                      limit: int | None = None) -> Dataset:
    """Every image file in ``folder`` (sorted by name, not recursive), resized.

    Args:
        size: output ``H = W = size`` or ``(H, W)``; bilinear resampling.
        channels: 1 (greyscale) or 3 (RGB).
        limit: keep the first ``limit`` files.

    Returns:
        images ``(N, channels, H, W)`` float32 in ``[0, 1]``, labels all ``-1``, ``names`` the
        file names.
    """
    from PIL import Image

    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, tuple) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive int or a (H, W) pair of them, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if limit is not None:
        _check_positive_int(limit, "limit")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    files = files[:limit] if limit is not None else files
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), size[0], size[1], channels), dtype=np.float32)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                im = im.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except OSError as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from exc
        out[i] = arr.reshape(size[0], size[1], channels)
    x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return Dataset(x, torch.full((len(files),), -1, dtype=torch.int64), tuple(p.name for p in files))
