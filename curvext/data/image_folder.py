"""Image folders streamed from disk: a deterministic manifest of the files, and a
``torch.utils.data.Dataset`` that decodes one image at a time (in ``DataLoader`` workers), so
memory does not grow with the folder.

Two layouts: torchvision's ``ImageFolder`` (one sub-folder per class, labels are the sorted
sub-folder indices, files found recursively below each) and a flat folder (the image files
directly inside it, no labels). Images are converted to 1 or 3 channels, resized so that the
shorter side is ``resize`` and centre-cropped to ``image_size x image_size`` (the ImageNet
convention with ``resize=256, image_size=224``), as float32 in ``[0, 1]``: models that expect
normalised inputs get a :class:`curvext.data.normalization.Normalized` in front of them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)

#: the extensions torchvision's ImageFolder reads (jpg, jpeg, png, ppm, bmp, pgm, tif, tiff, webp)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Manifest:
    """The files of an image folder in a fixed order (sorted relative paths, ``/``-separated).

    root: the folder. paths: ``(N,)`` paths relative to root. labels: ``(N,)`` class indices, or
    None for a flat folder. classes: the class names (sub-folders) by index; empty when flat.
    """

    root: str
    paths: tuple[str, ...]
    labels: tuple[int, ...] | None
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def scan_image_folder(root: str | os.PathLike) -> Manifest:
    """The manifest of ``root``: ImageFolder layout when it has sub-folders holding images (the
    sub-folders holding none are not classes), else the image files directly inside it. Raises
    FileNotFoundError naming the folder when it is missing or holds no image file."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    folders = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    per_folder = {name: [(Path(dirpath) / f).relative_to(folder).as_posix()
                         for dirpath, dirnames, filenames in _walk(folder / name)
                         for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
                  for name in folders}
    classes = [name for name in folders if per_folder[name]]
    if classes and len(classes) < len(folders):
        logger.warning("%s: sub-folders without images are not classes: %s", folder,
                       ", ".join(n for n in folders if not per_folder[n])[:200])
    found = [(path, index) for index, name in enumerate(classes) for path in per_folder[name]]
    if found:
        flat_files = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if flat_files:
            logger.warning("%s: %d image files beside the class sub-folders are ignored (ImageFolder layout)",
                           folder, len(flat_files))
        found.sort()
        return Manifest(str(folder), tuple(p for p, _ in found), tuple(label for _, label in found),
                        tuple(classes))
    flat = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                  and (folder / f).is_file())
    if not flat:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder} or its sub-folders")
    return Manifest(str(folder), tuple(flat), None, ())


def _walk(root: Path):
    """``os.walk`` in sorted order (sub-folders too), following links."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        yield dirpath, dirnames, filenames


@dataclass(frozen=True)
class Preprocessing:
    """How files become model inputs: ``channels`` (1 grey, 3 RGB), the shorter side resized to
    ``resize`` (None: to ``image_size``), then centre-cropped to ``image_size`` square."""

    image_size: int = 224
    resize: int | None = None
    channels: int = 3

    def __post_init__(self):
        for name in ("image_size", "resize"):
            value = getattr(self, name)
            if value is None and name == "resize":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size}): the "
                             "shorter side is resized, then a centre crop of image_size is taken")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def transform(self):
        """The torchvision transform: a PIL image -> ``(channels, image_size, image_size)`` float32."""
        transforms = optional_import("torchvision.transforms")
        return transforms.Compose([
            transforms.Grayscale(1) if self.channels == 1 else transforms.Lambda(_rgb),
            transforms.Resize(self.resize or self.image_size,
                              interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
        ])


def _rgb(image):
    return image.convert("RGB")


class ImageFileDataset(torch.utils.data.Dataset):
    """Items ``(index, image (C, S, S) float32, error)`` for the manifest rows ``indices``; a file
    that cannot be read or decoded gives a zero image and ``error`` saying why (else ``""``), so
    one bad file never stops a sweep."""

    def __init__(self, manifest: Manifest, preprocessing: Preprocessing, indices=None):
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.indices = list(range(len(manifest))) if indices is None else [int(i) for i in indices]
        self._transform = None  # built in each worker process on first use

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        index = self.indices[item]
        if self._transform is None:
            self._transform = self.preprocessing.transform()
        image_module = optional_import("PIL.Image")
        size = self.preprocessing.image_size
        try:
            with image_module.open(Path(self.manifest.root) / self.manifest.paths[index]) as im:
                im.load()
                x = self._transform(im)
            return index, x, ""
        except Exception as err:  # noqa: BLE001  (PIL raises many types for a bad file)
            blank = torch.zeros(self.preprocessing.channels, size, size)
            return index, blank, f"{type(err).__name__}: {err}"[:300]
